import dataclasses

import jax
import ml_collections
import numpy as np
import pytest

from wavjepa_jax import configuration, sharding


def mesh_config(data=-1, fsdp=1, tensor=1, dcn_data=1):
    config = configuration.default_config()
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    config.dcn_mesh.data = dcn_data
    return config


def test_minus_one_takes_the_remaining_devices():
    sizes = sharding.resolve_axis_sizes(ml_collections.ConfigDict(
        dict(data=-1, fsdp=4, tensor=1)), 32, "mesh")
    assert sizes == {"data": 8, "fsdp": 4, "tensor": 1}


@pytest.mark.parametrize("sizes,message", [
    (dict(data=-1, fsdp=-1, tensor=1), "only one axis may be -1"),
    (dict(data=3, fsdp=-1, tensor=1), "not divisible"),
    (dict(data=2, fsdp=2, tensor=1), "needs 4 devices but 8"),
    (dict(data=0, fsdp=8, tensor=1), "positive or -1"),
])
def test_impossible_meshes_are_refused(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.resolve_axis_sizes(ml_collections.ConfigDict(sizes), 8, "mesh")


def test_mesh_over_eight_devices_has_the_three_named_axes():
    mesh = sharding.make_mesh(mesh_config(data=2, fsdp=2, tensor=2))
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    assert sharding.batch_parallelism(mesh) == 4


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """Enough of a device for mesh_utils' hybrid (multi-slice) layout."""
    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


def test_multislice_mesh_puts_the_data_axis_across_slices():
    devices = [FakeDevice(i, slice_index=i // 4) for i in range(8)]
    grid = sharding.device_grid(mesh_config(data=2, fsdp=2, dcn_data=2), devices)
    assert grid.shape == (4, 2, 1)
    slices = np.vectorize(lambda d: d.slice_index)(grid)
    # Each slice holds a whole ICI mesh (data 2 x fsdp 2); only `data` crosses slices.
    assert (slices[:2] == 0).all() and (slices[2:] == 1).all()


def test_activation_and_parameter_names_never_share_a_mesh_axis_within_a_tensor():
    rules = dict(sharding.LOGICAL_RULES)
    batch_axes = set(rules["batch"])
    for name in ("act_embed", "act_heads", "act_mlp", "conv_act", "length", "conv_length"):
        axes = rules[name]
        axes = {axes} if isinstance(axes, str) else set(axes or ())
        assert not axes & batch_axes, name


def test_logical_shardings_follow_the_rules_for_a_parameter():
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 2, 2), sharding.MESH_AXES)
    import flax.linen as nn
    boxed = {"w": nn.LogicallyPartitioned(jax.ShapeDtypeStruct((8, 16), np.float32),
                                          ("embed", "mlp"))}
    spec = sharding.logical_shardings(boxed, mesh)["w"].spec
    assert tuple(spec) == ("fsdp", "tensor")
