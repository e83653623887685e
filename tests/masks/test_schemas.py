import numpy as np
import pytest

from magseg_ray.errors import SchemaError
from magseg_ray.masks.schemas import SCHEMAS, classes_from_instances, get_schema


def test_no_boundary_against_background():
    inst = np.full((6, 8), 29, np.uint16)
    inst[:, -2:] = 0
    inst[:, :3] = 4
    classes = classes_from_instances(inst, "fields3")
    assert (classes[:, 2:4] == 2).all() and (classes[:, 4:6] == 1).all() and (classes[:, :2] == 1).all()
    assert (classes[:, 6:] == 0).all()


def test_boundary_width_and_other_schemas():
    inst = np.zeros((4, 10), np.uint16)
    inst[:, :5], inst[:, 5:] = 1, 2
    assert (classes_from_instances(inst, "fields3", boundary_width=2)[:, 3:7] == 2).all()
    assert (classes_from_instances(inst, "ai4sf") == 1).all()


def test_schema_lookup_and_codes():
    assert get_schema("alu").codes == "bftcpw" and SCHEMAS["fields3"].index_of("e") == 2
    with pytest.raises(SchemaError, match="unknown label schema 'x'"):
        get_schema("x")
    with pytest.raises(SchemaError, match="no class code 'z'"):
        SCHEMAS["ai4sf"].index_of("z")
