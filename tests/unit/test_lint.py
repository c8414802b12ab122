"""twotier.lint's verdicts on objects and checkov reports made to fail (the real renders are
checked by `invoke lint`, which CI runs)."""
from twotier.lint import checkov_problems, schema_problems


def test_schema_check_rejects_unknown_kinds_and_fields():
    unknown = {"apiVersion": "v1", "kind": "Storage", "metadata": {"name": "x"}}
    typo = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prots": []}}
    good = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}]}}
    problems = schema_problems([unknown, typo, good])
    assert len(problems) == 2
    assert "no schema" in problems[0] and "prots" in problems[1]


def _check(check_id, resource, file, comment=None):
    c = {"check_id": check_id, "check_name": "a check", "resource": resource, "file_path": "/" + file,
         "check_result": {}}
    if comment is not None:
        c["check_result"]["suppress_comment"] = comment
    return c


def test_checkov_findings_unexplained_and_stale_suppressions_are_problems():
    pod = {"kind": "Pod", "metadata": {"name": "loader", "annotations": {
        "checkov.io/skip1": "CKV_K8S_1=the reason is long enough to read",
        "checkov.io/skip2": "CKV_K8S_2=stale: suppresses nothing"}}}
    objects = {"loader.yaml": [pod]}
    report = {"summary": {"parsing_errors": 0},
              "results": {"failed_checks": [_check("CKV_K8S_9", "default.Pod.loader", "loader.yaml")],
                          "skipped_checks": [_check("CKV_K8S_1", "default.Pod.loader", "loader.yaml",
                                                    "the reason is long enough to read"),
                                             _check("CKV_K8S_3", "default.Pod.other", "loader.yaml", "short")]}}
    problems = checkov_problems(report, objects)
    assert any(p.startswith("finding: CKV_K8S_9") for p in problems)
    assert any("without a reason" in p and "CKV_K8S_3" in p for p in problems)
    assert any(p.startswith("stale suppression") and "CKV_K8S_2" in p for p in problems)
    assert not any("CKV_K8S_1 " in p for p in problems)
    assert len(problems) == 3


def test_every_stage_and_component_meets_pod_security_restricted():
    from twotier import lint

    renders = lint.restricted_renders()
    assert "storage" in renders and "full+internal-storage" in renders
    assert not any("volume-owner" in name for name in renders)
    problems = [f"{name}: {p}" for name, objs in renders.items() for p in lint.restricted_problems(objs)]
    assert problems == []


def test_the_restricted_check_finds_a_root_init_container():
    from twotier import lint
    from twotier.ops.render import render_stage
    from twotier.settings import Settings

    objs = render_stage(Settings(), "storage", images=lint.REFS, overlay="volume-owner")
    problems = lint.restricted_problems(objs)
    assert any("container storage-owner: runs as uid 0" in p for p in problems)
    assert any("adds capabilities ['CHOWN', 'FOWNER']" in p for p in problems)
    assert lint.restricted_problems([{"kind": "Pod", "metadata": {"name": "p"}, "spec": {
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {}}]}}])


def test_manifests_are_validated_against_the_default_and_the_oldest_supported_release():
    from localcluster import versions
    from twotier.lint import schema_versions

    d = versions.defaults()
    assert schema_versions() == [f"1.{versions.minor(d['KUBERNETES_VERSION'])}", d["OLDEST_KUBERNETES_MINOR"]]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    for v in schema_versions():  # kubernetes-validate has both minors' schemas
        assert schema_problems([pod], v) == []
        assert schema_problems([{**pod, "spec": {**pod["spec"], "bogus": 1}}], v)
