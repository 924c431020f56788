"""Device mesh and the logical-axis rules that place parameters and activations on it.

Sharding is data: modules name their axes (`embed`, `mlp`, `heads`, ...), and `LOGICAL_RULES`
maps those names onto the mesh axes `data`, `fsdp` and `tensor`. The same rules serve the online
params, the EMA target params and the optimizer state, since they share the params' tree.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (logical name, mesh axes). Parameters: embed/pred_embed/conv_out are FSDP-sharded, mlp and heads
# tensor-parallel. Activations: the batch over data x fsdp, heads and mlp over tensor.
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("embed", "fsdp"),
    ("pred_embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("layers", None),
    ("head_out", None),
    ("conv_in", None),
    ("conv_out", "fsdp"),
    ("conv_length", None),
    ("conv_act", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
)


def resolve_axis_sizes(sizes: ml_collections.ConfigDict, num_devices: int, what: str) -> dict:
    """Replace a single -1 by what is left of `num_devices`; check the product."""
    sizes = {axis: int(sizes[axis]) for axis in MESH_AXES}
    unknown = [axis for axis, size in sizes.items() if size == -1]
    if len(unknown) > 1:
        raise ValueError(f"{what}: only one axis may be -1, got {unknown}")
    if any(size == 0 or size < -1 for size in sizes.values()):
        raise ValueError(f"{what}: axis sizes must be positive or -1, got {sizes}")
    known = math.prod(size for size in sizes.values() if size != -1)
    if unknown:
        if num_devices % known:
            raise ValueError(f"{what}: {num_devices} devices are not divisible by the fixed axes "
                             f"{ {a: s for a, s in sizes.items() if s != -1} }")
        sizes[unknown[0]] = num_devices // known
    if math.prod(sizes.values()) != num_devices:
        raise ValueError(f"{what}={sizes} needs {math.prod(sizes.values())} devices but "
                         f"{num_devices} are available")
    return sizes


def device_grid(config: ml_collections.ConfigDict, devices) -> np.ndarray:
    """Devices arranged as (data, fsdp, tensor): ICI sizes from config.mesh, DCN sizes from
    config.dcn_mesh.

    With DCN sizes > 1 (several TPU slices or GPU nodes) the grid is hybrid: the DCN part of each
    axis spans slices/nodes, so slow links only carry that axis's traffic (normally `data`).
    """
    devices = list(devices)
    dcn = {axis: int(config.dcn_mesh[axis]) for axis in MESH_AXES}
    num_slices = math.prod(dcn.values())
    if len(devices) % num_slices:
        raise ValueError(f"dcn_mesh={dcn} needs a multiple of {num_slices} devices, "
                         f"got {len(devices)}")
    ici = resolve_axis_sizes(config.mesh, len(devices) // num_slices, "mesh")
    shape = tuple(ici[axis] * dcn[axis] for axis in MESH_AXES)
    if num_slices > 1:
        return mesh_utils.create_hybrid_device_mesh(
            [ici[a] for a in MESH_AXES], [dcn[a] for a in MESH_AXES], devices,
            allow_split_physical_axes=True)
    if devices == list(jax.devices()):
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    return np.asarray(devices).reshape(shape)


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> Mesh:
    """The (data, fsdp, tensor) mesh over `devices` (default: all), axes in Auto mode so logical
    sharding constraints apply."""
    grid = device_grid(config, jax.devices() if devices is None else devices)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def batch_parallelism(mesh: Mesh) -> int:
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def logical_shardings(boxed_tree, mesh: Mesh):
    """NamedShardings for a tree of nn.LogicallyPartitioned leaves (e.g. from eval_shape(init))."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_divisible_params(abstract_params, shardings) -> None:
    """Fail early, naming the parameter, when a sharded dimension does not divide evenly."""
    flat_params = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    flat_shardings = jax.tree.leaves(shardings)
    for (path, leaf), sharding in zip(flat_params, flat_shardings):
        for dim, axes in zip(leaf.shape, sharding.spec):
            axes = (axes,) if isinstance(axes, str) else (axes or ())
            ways = math.prod(sharding.mesh.shape[a] for a in axes)
            if dim % ways:
                name = jax.tree_util.keystr(path)
                raise ValueError(f"parameter {name} of shape {leaf.shape} cannot be split "
                                 f"{ways} ways over mesh axes {axes}; choose mesh sizes that "
                                 "divide the model's widths")
