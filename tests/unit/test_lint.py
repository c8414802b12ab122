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
