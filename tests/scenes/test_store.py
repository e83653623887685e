import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.env import getenv
from rasterio.transform import from_origin
from rasterio.windows import Window

from magseg_ray.errors import ConfigError, SceneError
from magseg_ray.scenes.store import ObjectStore, list_cogs, split_uri

NAIP = Path(__file__).resolve().parents[1] / "data/naip"
# Scenes in UTM 17N and 15N; the folder also holds a labels-only sample, which is no scene.
IDS = ["naip_43p4066_m83p6220", "naip_44p0347_m93p8702"]


@pytest.fixture(scope="module")
def naip_s3(s3_server):
    return s3_server.upload(NAIP, "store-tests", "naip")


def test_from_env_reads_standard_variables():
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
    }
    store = ObjectStore.from_env(env)
    assert store == ObjectStore("http://127.0.0.1:9000", "eu-west-1", "key", "secret", "token")
    assert not store.https and store.path_style
    env |= {
        "AWS_ENDPOINT_URL_S3": "https://s3.example.org",  # wins over AWS_ENDPOINT_URL
        "AWS_REGION": "us-west-2",  # wins over AWS_DEFAULT_REGION
        "AWS_VIRTUAL_HOSTING": "TRUE",
    }
    store = ObjectStore.from_env(env)
    assert (store.endpoint_url, store.region) == ("https://s3.example.org", "us-west-2")
    assert store.https and not store.path_style
    aws = ObjectStore.from_env({})
    assert aws == ObjectStore() and aws.https and not aws.path_style
    with pytest.raises(ConfigError, match="not http"):
        ObjectStore("127.0.0.1:9000")


def test_rasterio_env_sets_gdal_options():
    store = ObjectStore("http://127.0.0.1:9000", "eu-west-1", "key", "secret")
    with store.rasterio_env(GDAL_HTTP_MAX_RETRY="3"):
        options = getenv()
    expected = {
        "AWS_S3_ENDPOINT": "127.0.0.1:9000",
        "AWS_HTTPS": "NO",
        "AWS_VIRTUAL_HOSTING": "FALSE",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_REGION": "eu-west-1",
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
        "GDAL_HTTP_MAX_RETRY": "3",
    }
    assert {k: options.get(k) for k in expected} == expected
    assert ".tif" in options["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"]


def test_paths():
    store = ObjectStore()
    assert split_uri("s3://bucket/a/b.tif") == ("s3", "bucket/a/b.tif")
    assert split_uri("s3://bucket/prefix/") == ("s3", "bucket/prefix")
    assert store.gdal_path("s3://bucket/a/b.tif") == "/vsis3/bucket/a/b.tif"
    assert store.gdal_path("file:///data/my%20scene.tif") == "/data/my scene.tif"
    assert store.gdal_path("rel/x.tif") == os.path.abspath("rel/x.tif")
    assert type(store.filesystem("s3://bucket")).__name__ == "S3FileSystem"
    assert type(store.filesystem("/data")).__name__ == "LocalFileSystem"
    # a STAC asset at an http(s) URL is read in place; it is never a place to write or list
    assert store.gdal_path("https://example.org/x.tif") == "/vsicurl/https://example.org/x.tif"
    with pytest.raises(SceneError, match="unsupported URI scheme 'https'"):
        split_uri("https://example.org/out")
    with pytest.raises(SceneError, match="unsupported URI scheme 'gs'"):
        store.gdal_path("gs://bucket/x.tif")


def test_list_cogs_finds_scenes_and_sidecars(tmp_path):
    names = "a.tif a.labels.tif a.mask.tif b.TIFF b.fields.gpkg sub/c.tif .a.tif.tmp .hidden.tif notes.txt"
    for name in names.split():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    scenes = list_cogs(tmp_path)
    assert [s.id for s in scenes] == ["a", "b", "c"]
    assert [s.uri for s in scenes] == [str(tmp_path / name) for name in ("a.tif", "b.TIFF", "sub/c.tif")]
    assert (scenes[0].labels_uri, scenes[0].fields_uri) == (str(tmp_path / "a.labels.tif"), None)
    assert (scenes[1].labels_uri, scenes[1].fields_uri) == (None, str(tmp_path / "b.fields.gpkg"))
    assert list_cogs(tmp_path / "missing") == []


def test_list_cogs_local_file_uri_and_s3_agree(naip_s3, s3_server):
    local = list_cogs(NAIP)
    assert [s.id for s in local] == IDS and list_cogs(NAIP.as_uri()) == local
    remote = list_cogs(naip_s3 + "/", s3_server.store)
    assert [s.id for s in remote] == IDS
    for scene in remote:
        assert scene.uri == f"{naip_s3}/{scene.id}.tif"
        assert scene.labels_uri == f"{naip_s3}/{scene.id}.labels.tif"
        assert scene.fields_uri == f"{naip_s3}/{scene.id}.fields.gpkg"
    with pytest.raises(SceneError, match="cannot list"):
        list_cogs("s3://no-such-bucket/naip", s3_server.store)


def test_window_over_vsis3_equals_local_read(naip_s3, s3_server):
    window = Window(300, 400, 256, 256)
    with rasterio.open(NAIP / f"{IDS[1]}.tif") as src:
        local = src.read(window=window)
    store = s3_server.store
    with store.rasterio_env(), rasterio.open(store.gdal_path(f"{naip_s3}/{IDS[1]}.tif")) as src:
        remote = src.read(window=window)
    assert remote.shape == (3, 256, 256)
    np.testing.assert_array_equal(remote, local)


def test_window_read_fetches_only_its_ranges(tmp_path, s3_server):
    """A 256x256 window of a 2048x2048 uncompressed COG (about 16 MB with overviews) fetches the
    header and one 256x256 tile, as counted at the server."""
    data = np.random.default_rng(0).integers(0, 256, (3, 2048, 2048), dtype=np.uint8)
    path = tmp_path / "big.tif"
    profile = dict(driver="COG", width=2048, height=2048, count=3, dtype="uint8", crs="EPSG:32616")
    profile |= dict(transform=from_origin(500_000, 4_600_000, 1, 1), compress="NONE", blocksize=256)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    uri = s3_server.upload(path, "store-tests", "big") + "/big.tif"
    store = s3_server.store
    before = s3_server.sent_bytes
    with store.rasterio_env(VSI_CACHE=False), rasterio.open(store.gdal_path(uri)) as src:
        window = src.read(window=Window(512, 768, 256, 256))
    sent = s3_server.sent_bytes - before
    np.testing.assert_array_equal(window, data[:, 768:1024, 512:768])
    assert 256 * 256 * 3 <= sent < 0.05 * path.stat().st_size
