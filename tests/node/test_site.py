"""Creating a site directory, and reading its key file back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from meshpacs.errors import ConfigError, FormatError, KeyMaterialError, UnknownVersion
from meshpacs.keys.secret import SiteSecret
from meshpacs.node.config import DicomConfig, load_config
from meshpacs.node.site import CreatedSite, create_site, load_site_secret


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, CreatedSite]:
    directory = tmp_path / "site"
    return directory, create_site(directory, "st-marys", "MESH_STM", dicom_port=4104)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_create_site_lays_out_the_directory(site: tuple[Path, CreatedSite]) -> None:
    directory, created = site
    assert created.config_path == directory / "config.toml"
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.toml",
        "fragments",
        "instances",
        "site.key",
        "tmp",
    ]
    config = load_config(created.config_path)
    assert config.site.id == "st-marys"
    assert config.site.data_dir == directory  # data_dir = "." is the site directory itself
    assert config.dicom == DicomConfig(ae_title="MESH_STM", port=4104)
    for path in (config.instances_dir, config.fragments_dir, config.tmp_dir):
        assert path.is_dir() and not any(path.iterdir())
    assert config.key_file == directory / "site.key"
    assert not config.catalog_path.exists()  # the node creates its catalog


def test_key_file_is_0600_and_the_data_directories_are_private(
    site: tuple[Path, CreatedSite],
) -> None:
    directory, _ = site
    assert mode(directory / "site.key") == 0o600
    for name in ("instances", "fragments", "tmp"):
        assert mode(directory / name) & 0o077 == 0


def test_phrase_and_key_file_hold_the_same_secret(site: tuple[Path, CreatedSite]) -> None:
    directory, created = site
    from_file = load_site_secret(directory / "site.key")
    from_phrase = SiteSecret.from_phrase(created.phrase)
    assert from_file == from_phrase
    assert from_file.fingerprint == from_phrase.fingerprint == created.fingerprint


def test_key_file_format_is_versioned_and_small(site: tuple[Path, CreatedSite]) -> None:
    directory, created = site
    lines = (directory / "site.key").read_text("ascii").splitlines()
    assert lines[0] == "meshpacs-site-key v1"
    assert lines[1].startswith("secret ") and len(lines[1]) == len("secret ") + 64
    assert lines[2] == f"fingerprint {created.fingerprint}"
    assert len(lines) == 3


def test_the_phrase_is_written_nowhere(site: tuple[Path, CreatedSite]) -> None:
    directory, created = site
    groups = created.phrase.split("-")
    for path in directory.rglob("*"):
        if path.is_file():
            content = path.read_text()
            assert created.phrase not in content
            assert not any(group in content for group in groups[:3]), path


def test_the_phrase_is_not_in_the_repr(site: tuple[Path, CreatedSite]) -> None:
    _, created = site
    assert created.phrase not in repr(created)
    assert created.fingerprint in repr(created)


def test_each_site_gets_its_own_secret(tmp_path: Path) -> None:
    first = create_site(tmp_path / "a", "a", "A")
    second = create_site(tmp_path / "b", "b", "B")
    assert first.fingerprint != second.fingerprint
    assert first.phrase != second.phrase


def test_an_existing_empty_directory_is_used(tmp_path: Path) -> None:
    created = create_site(tmp_path, "st-marys", "MESH")
    assert created.config_path == tmp_path / "config.toml"
    assert load_config(created.config_path).dicom.port == 11112


def test_a_relative_directory_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    created = create_site(Path("rel/site"), "st-marys", "MESH")
    assert created.config_path == tmp_path / "rel" / "site" / "config.toml"


def test_a_non_empty_directory_is_refused_and_left_alone(tmp_path: Path) -> None:
    (tmp_path / "site.key").write_text("the key of a site that already exists")
    with pytest.raises(ConfigError, match="is not empty") as caught:
        create_site(tmp_path, "st-marys", "MESH")
    assert str(tmp_path) in str(caught.value)
    assert [p.name for p in tmp_path.iterdir()] == ["site.key"]
    assert (tmp_path / "site.key").read_text() == "the key of a site that already exists"


def test_an_existing_site_is_refused(site: tuple[Path, CreatedSite]) -> None:
    directory, _ = site
    before = (directory / "site.key").read_bytes()
    with pytest.raises(ConfigError, match="not empty"):
        create_site(directory, "st-marys", "MESH_STM")
    assert (directory / "site.key").read_bytes() == before


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        create_site(tmp_path / "file", "st-marys", "MESH")


@pytest.mark.parametrize(
    ("site_id", "ae_title", "port", "words"),
    [
        ("St Marys", "MESH", 11112, "site ID"),
        ("st-marys", "", 11112, "AE title"),
        ("st-marys", "BACK\\SLASH", 11112, "backslash"),
        ("st-marys", "MESH", 0, "port"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(
    tmp_path: Path, site_id: str, ae_title: str, port: int, words: str
) -> None:
    with pytest.raises(ConfigError, match=words):
        create_site(tmp_path / "site", site_id, ae_title, port)
    assert not (tmp_path / "site").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_unwritable_parent_gives_a_config_error(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot create the site"):
            create_site(tmp_path / "site", "st-marys", "MESH")
    finally:
        tmp_path.chmod(0o700)


def test_a_failure_half_way_removes_what_was_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import meshpacs.node.site as site_module

    real = site_module.write_new

    def fail_on_config(path: Path, data: bytes, mode: int) -> None:
        if path.name == "config.toml":
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(site_module, "write_new", fail_on_config)
    with pytest.raises(ConfigError, match="No space left on device"):
        create_site(tmp_path / "site", "st-marys", "MESH")
    assert not (tmp_path / "site").exists()


# --- load_site_secret -----------------------------------------------------------------


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
def test_a_key_file_open_to_others_is_refused(site: tuple[Path, CreatedSite], loose: int) -> None:
    directory, _ = site
    key_file = directory / "site.key"
    key_file.chmod(loose)
    with pytest.raises(ConfigError) as caught:
        load_site_secret(key_file)
    message = str(caught.value)
    assert f"chmod 600 {key_file}" in message
    assert f"{loose:04o}" in message
    key_file.chmod(0o600)
    assert load_site_secret(key_file).fingerprint == site[1].fingerprint


def test_a_stricter_key_file_is_accepted(site: tuple[Path, CreatedSite]) -> None:
    directory, created = site
    (directory / "site.key").chmod(0o400)
    assert load_site_secret(directory / "site.key").fingerprint == created.fingerprint


def write_key(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    path.chmod(0o600)
    return path


def key_text(secret: SiteSecret, version: str = "v1", fingerprint: str | None = None) -> str:
    return (
        f"meshpacs-site-key {version}\n"
        f"secret {secret.value.hex()}\n"
        f"fingerprint {fingerprint or secret.fingerprint}\n"
    )


def test_a_hand_written_key_file_in_the_format_loads(tmp_path: Path) -> None:
    secret = SiteSecret.generate()
    path = write_key(tmp_path / "k", key_text(secret).encode())
    assert load_site_secret(path) == secret
    # without the final newline too
    path = write_key(tmp_path / "k2", key_text(secret).rstrip("\n").encode())
    assert load_site_secret(path) == secret


def test_an_unknown_version_is_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", key_text(SiteSecret.generate(), "v2").encode())
    with pytest.raises(UnknownVersion, match="version 2") as caught:
        load_site_secret(path)
    assert caught.value.version == 2


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00" * 64,
        b"-----BEGIN PRIVATE KEY-----\n",
        b"meshpacs-site-key\n",
        b"meshpacs-site-key v1\n",
        b"meshpacs-site-key v1\nsecret 00\nfingerprint 0000000000000000\n",
        b"meshpacs-site-key v1\nsecret " + b"G" * 64 + b"\nfingerprint 0000000000000000\n",
        b"meshpacs-site-key v1\nsecret " + b"A" * 64 + b"\nfingerprint 0000000000000000\n",
        b"meshpacs-site-key v1\r\nsecret " + b"a" * 64 + b"\r\nfingerprint 0000000000000000\r\n",
        b"meshpacs-site-key v1\nsecret " + b"a" * 64 + b"\nfingerprint 0\nextra\n",
        b"meshpacs-site-key v1\n\xff\xfe\n",
        b"meshpacs-site-key v1\n" + b"x" * 10_000,
    ],
)
def test_malformed_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = write_key(tmp_path / "site.key", content)
    with pytest.raises(FormatError) as caught:
        load_site_secret(path)
    assert str(path) in str(caught.value)


def test_a_key_file_whose_fingerprint_does_not_match_is_refused(tmp_path: Path) -> None:
    secret = SiteSecret.generate()
    path = write_key(tmp_path / "k", key_text(secret, fingerprint="0123456789abcdef").encode())
    with pytest.raises(KeyMaterialError, match="does not match its fingerprint") as caught:
        load_site_secret(path)
    assert secret.value.hex() not in str(caught.value)


def test_missing_and_non_regular_key_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_secret(tmp_path / "absent.key")
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="not a regular file"):
        load_site_secret(tmp_path / "dir")


def test_errors_never_show_the_secret(site: tuple[Path, CreatedSite]) -> None:
    directory, _ = site
    key_file = directory / "site.key"
    secret_hex = key_file.read_text().splitlines()[1].split()[1]
    key_file.write_text(key_file.read_text().replace("secret ", "secret: "))
    with pytest.raises(FormatError) as caught:
        load_site_secret(key_file)
    assert secret_hex not in str(caught.value)
