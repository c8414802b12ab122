"""Image planning without Docker: .dockerignore semantics, content-derived tags, references, and
what every Dockerfile must (not) contain."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from docker.utils.build import PatternMatcher

from twotier.errors import UserError
from twotier.images import build as images
from twotier.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings()
DOCKERFILES = sorted((ROOT / "services").glob("*/Dockerfile"))
SERVICE_DOCKERFILES = [d for d in DOCKERFILES if d.parent.name != "loader"]
PORTS = {"storage": 5000, "app": 5001, "hello": 5000}
PACKAGES = {"storage": "storage_api", "app": "app_api", "hello": "hello_app"}


# ---------------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("patterns", "path", "ignored"), [
    (["*"], "a.py", True),
    (["*", "!pkg"], "pkg/mod.py", False),
    (["*", "!pkg", "**/__pycache__"], "pkg/__pycache__/mod.cpython-311.pyc", True),
    (["*", "!pkg", "**/*.py[co]"], "pkg/sub/mod.pyc", True),
    (["*.md"], "docs/readme.md", False),  # * does not cross "/"
    (["**/*.md"], "docs/readme.md", True),
    (["docs"], "docs/deep/file.txt", True),  # a matching parent folder excludes its content
    (["tests", "!tests/keep.txt"], "tests/keep.txt", False),
    (["?.txt"], "a.txt", True),
    (["?.txt"], "ab.txt", False),
])
def test_dockerignore_rules_follow_docker(patterns, path, ignored):
    assert PatternMatcher(patterns).matches(path) is ignored


def copy_services(tmp_path) -> Path:
    """A copy of services/ (the shared build context of the Python images)."""
    dst = tmp_path / "services"
    shutil.copytree(ROOT / "services", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_context_is_only_what_the_images_need(tmp_path):
    ctx = copy_services(tmp_path)
    (ctx / "storage" / "storage_api" / "__pycache__").mkdir()
    (ctx / "storage" / "storage_api" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (ctx / "storage" / "notes.txt").write_text("not for the image")
    (ctx / "common" / "tests").mkdir()
    (ctx / "common" / "tests" / "test_x.py").write_text("not for the image")
    (ctx / ".venv").mkdir()
    (ctx / ".venv" / "junk").write_text("x")
    files = images.context_files(ctx)
    assert {"storage/requirements.txt", "storage/storage_api/__init__.py",
            "common/twotier_service/serving.py"} <= set(files)
    assert not [f for f in files if "__pycache__" in f or f.startswith((".venv", "loader/", "common/tests"))
                or f.endswith(("notes.txt", "Dockerfile", ".dockerignore"))], files


@pytest.mark.parametrize("service", sorted(PACKAGES))
def test_each_service_image_holds_its_package_requirements_and_the_shared_package(service):
    (img,) = [i for i in images.plan(SETTINGS, "full" if service == "app" else service, inspect_base=False)
              if i.role == service]
    assert img.context == ROOT / "services" and img.dockerfile_path == ROOT / "services" / service / "Dockerfile"
    files = images.source_files(img.context, img.sources)
    assert f"{service}/requirements.txt" in files
    assert f"{service}/{PACKAGES[service]}/__main__.py" in files
    assert {"common/twotier_service/__init__.py", "common/twotier_service/jsonapi.py",
            "common/twotier_service/serving.py"} <= set(files)
    assert all(f.startswith(("common/twotier_service/", f"{service}/{PACKAGES[service]}/"))
               or f in {f"{service}/requirements.txt", f"{service}/requirements-dev.txt", f"{service}/openapi.yaml"}
               for f in files), files


def test_loader_keeps_its_own_context():
    (loader,) = [i for i in images.plan(SETTINGS, "hello", inspect_base=False) if i.role == "loader"]
    assert loader.context == ROOT / "services" / "loader" and loader.sources == ()
    assert loader.dockerfile_path == ROOT / "services" / "loader" / "Dockerfile"


# ---------------------------------------------------------------------------------------------
# Content hashes and references
# ---------------------------------------------------------------------------------------------

def test_hash_changes_with_what_goes_into_the_image_and_only_with_that(tmp_path):
    ctx = copy_services(tmp_path)
    svc, dockerfile, sources = ctx / "storage", ctx / "storage" / "Dockerfile", ("storage", "common")

    def digest(**kw):
        return images.content_hash(ctx, dockerfile=dockerfile, sources=sources,
                                   **{"base_image": "b:1", "base_id": "sha256:1", **kw})

    first = digest()
    assert digest() == first
    (svc / "README.local").write_text("ignored by .dockerignore")
    (svc / "storage_api" / "__pycache__").mkdir(exist_ok=True)
    (svc / "storage_api" / "__pycache__" / "y.pyc").write_bytes(b"1")
    (ctx / "app" / "app_api" / "routes.py").write_text("# another image's code\n")
    (ctx / "loader" / "Dockerfile").write_text("# another image's Dockerfile\n")
    assert digest() == first
    seen = {first}
    for change in (lambda: (svc / "storage_api" / "routes.py").write_text("# changed\n", "utf-8"),
                   lambda: (svc / "requirements.txt").write_text("Flask==3.1.3\n"),
                   lambda: dockerfile.write_text(dockerfile.read_text() + "\n# x\n"),
                   lambda: (svc / "storage_api" / "names.py").chmod(0o755),
                   lambda: (ctx / "common" / "twotier_service" / "jsonapi.py").write_text("# shared\n")):
        change()
        new = digest()
        assert new not in seen
        seen.add(new)
    current = digest()
    assert digest(base_id="sha256:2") != current  # base rebuilt
    assert digest(base_image="b:2") != current
    assert digest(target="dev") != current


def test_a_service_change_keeps_the_other_tags_and_a_common_change_changes_them_all(tmp_path, monkeypatch):
    ctx = copy_services(tmp_path)
    monkeypatch.setattr(images, "SERVICES", ctx)

    def tags():
        return {i.name: i.tag for stage in ("hello", "full") for i in images.plan(SETTINGS, stage, inspect_base=False)}

    before = tags()
    assert set(before) == {"first-app", "sto-img", "api-img", "loader"}
    routes = ctx / "app" / "app_api" / "routes.py"
    routes.write_text(routes.read_text() + "\n# an app-only change\n")
    after_app = tags()
    assert after_app["api-img"] != before["api-img"]
    assert {k: v for k, v in after_app.items() if k != "api-img"} == \
        {k: v for k, v in before.items() if k != "api-img"}  # sto-img, first-app, loader keep theirs
    serving = ctx / "common" / "twotier_service" / "serving.py"
    serving.write_text(serving.read_text() + "\n# a shared change\n")
    after_common = tags()
    for name in ("first-app", "sto-img", "api-img"):
        assert after_common[name] != after_app[name], name
    assert after_common["loader"] == before["loader"]


@pytest.mark.parametrize(("stage", "names"), [
    ("hello", ["first-app", "loader"]),
    ("storage", ["sto-img", "loader"]),
    ("full", ["sto-img", "api-img", "loader"]),
])
def test_plan_names_the_stage_images_under_the_registry(stage, names):
    plan = images.plan(SETTINGS, stage, inspect_base=False)
    assert [i.name for i in plan] == names
    for img in plan:
        assert re.fullmatch(rf"localhost:5000/{img.name}:[0-9a-f]{{12}}", img.ref)
    assert images.plan(SETTINGS, stage, inspect_base=False) == plan  # deterministic


def test_registry_and_names_come_from_settings():
    plan = images.plan(Settings.from_mapping({"registry": "ghcr.io/me/", "images": {"storage": "storage-api"}}), "storage",
                       inspect_base=False)
    assert plan[0].ref.startswith("ghcr.io/me/storage-api:") and plan[0].seed_name == "sto-img"
    assert images.image_map(plan) == {"sto-img": plan[0].ref, "loader": plan[1].ref}


def test_target_and_base_image_setting_change_the_tags():
    base = images.plan(SETTINGS, "full", inspect_base=False)
    dev = images.plan(SETTINGS, "full", target="dev", inspect_base=False)
    local = images.plan(Settings(base_image="local"), "full", inspect_base=False)
    assert [d.tag.endswith("-dev") for d in dev] == [True, True, False]  # the loader has one flavour
    assert dev[2] == base[2]
    with pytest.raises(UserError):
        images.plan(SETTINGS, "full", target="debug", inspect_base=False)
    assert not {i.ref for i in base[:2]} & {i.ref for i in dev[:2]}
    assert not {i.ref for i in base} & {i.ref for i in local}


def test_base_image_setting():
    assert images.resolve_base_image(Settings(base_image="")) == ""
    assert images.resolve_base_image(Settings(base_image="local")) == images.LOCAL_BASE
    assert images.resolve_base_image(Settings(base_image="debian:bookworm")) == "debian:bookworm"


def test_unknown_stage_is_an_error():
    with pytest.raises(UserError) as err:
        images.plan(SETTINGS, "all", inspect_base=False)
    assert "full" in err.value.hint


def test_missing_docker_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError) as err:
        images.build(SETTINGS, "hello")
    assert "docker is not installed" in err.value.message and "apt-get install -y docker.io" in err.value.hint
    # planning (and so `invoke render`) still works without Docker
    assert images.plan(SETTINGS, "hello")[0].name == "first-app"


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------

def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_pulls_nothing_but_the_base_image(dockerfile):
    text = dockerfile.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    assert instructions(dockerfile)[0] == ("ARG", "BASE_IMAGE=python:3.12-slim")
    stages = set()
    for word, rest in instructions(dockerfile):
        if word == "FROM":
            source, *alias = rest.split()
            assert source == "${BASE_IMAGE}" or source in stages, f"FROM {source} would pull an image"
            if alias:
                stages.add(alias[-1])
        if word in ("COPY", "ADD") and "--from=" in rest:
            assert rest.split("--from=")[1].split()[0] in stages
        assert word != "ADD" or "http" not in rest


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_runs_as_non_root_with_an_exec_form_command(dockerfile):
    ins = instructions(dockerfile)
    users = [rest for word, rest in ins if word == "USER"]
    assert users and all(u == "10001:10001" for u in users)
    cmds = [rest for word, rest in ins if word == "CMD"]
    assert cmds and all(c.startswith("[") for c in cmds)
    assert ins[-1][0] == "CMD" and ins[-2] == ("USER", "10001:10001")  # default target ends non-root


@pytest.mark.parametrize("dockerfile", SERVICE_DOCKERFILES, ids=lambda p: p.parent.name)
def test_service_dockerfile_layout(dockerfile):
    service = dockerfile.parent.name
    ins = instructions(dockerfile)
    text = dockerfile.read_text()
    assert "python3 -m venv /opt/venv" in text
    # requirements are installed before the code is copied: their layer survives code edits
    req = next(i for i, (w, r) in enumerate(ins) if w == "RUN" and "requirements.txt" in r)
    code = next(i for i, (w, r) in enumerate(ins) if w == "COPY" and r == f"{service}/ /app")
    assert req < code
    # the context is services/: the shared package goes next to the service's own package
    assert ("COPY", f"{service}/requirements.txt /tmp/requirements.txt") in ins
    assert ("COPY", "common/twotier_service /app/twotier_service") in ins
    assert any(w == "ENV" and "PYTHONUNBUFFERED=1" in r for w, r in ins)
    assert ("EXPOSE", str(PORTS[service])) in ins
    froms = [r.split()[-1] for w, r in ins if w == "FROM"]
    assert froms[-1] == "runtime" and "dev" in froms  # production is the default target
    pkg = PACKAGES[service]
    assert f'CMD ["python", "-m", "{pkg}"]' in text
    assert f'CMD ["python", "-m", "{pkg}", "--dev"]' in text
    assert "chown -R 10001:10001 /app" in text  # dev: Tilt syncs into /app as the runtime user
    if service in ("storage", "app"):  # ... and runs pip install into the venv (Tiltfile live_update)
        dev = text.split("AS dev\n", 1)[1].split("\nFROM ", 1)[0]
        assert "chown -R 10001:10001 /app /opt/venv" in dev


def test_shared_context_dockerignore_lets_in_only_what_the_images_copy():
    files = images.context_files(ROOT / "services")
    assert files and all(f.startswith(("common/twotier_service/", "storage/", "app/", "hello/")) for f in files)
    assert not any(f.endswith(("Dockerfile", ".dockerignore")) or "__pycache__" in f for f in files), files
    assert [p.parent.name for p in (ROOT / "services").glob("*/.dockerignore")] == ["loader"]  # own context
