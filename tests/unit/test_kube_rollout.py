"""The rollout decision (kubectl's rollout_status.go rule) and the waiter built on it."""
import pytest
from kubefake import Clock, FakeCluster, deployment, pod

from twotier.errors import UserError
from twotier.kube.rollout import (
    RolloutFailed,
    newest_replicaset,
    pod_problem,
    pod_summary,
    pods_of_replicaset,
    rollout_state,
    wait_for_rollouts,
)


def dep(generation=2, observed=2, replicas=2, updated=2, total=2, available=2, conditions=None,
        name="sto-dep"):
    return {"metadata": {"name": name, "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                       "availableReplicas": available, "conditions": conditions or []}}


# --- rollout_state: each branch of kubectl's DeploymentStatusViewer ------------------------------
@pytest.mark.parametrize("kwargs, done, text", [
    (dict(generation=3, observed=2), False, "Waiting for deployment spec update to be observed..."),
    (dict(updated=1), False, 'Waiting for deployment "sto-dep" rollout to finish: 1 out of 2 new '
                             "replicas have been updated..."),
    (dict(total=3), False, 'Waiting for deployment "sto-dep" rollout to finish: 1 old replicas are '
                           "pending termination..."),
    (dict(available=1), False, 'Waiting for deployment "sto-dep" rollout to finish: 1 of 2 updated '
                               "replicas are available..."),
    (dict(), True, 'deployment "sto-dep" successfully rolled out'),
    (dict(generation=2, observed=5), True, 'deployment "sto-dep" successfully rolled out'),
])
def test_rollout_state_follows_kubectl(kwargs, done, text):
    assert rollout_state(dep(**kwargs)) == (done, text)


def test_rollout_state_checks_in_kubectls_order():
    # several things unfinished at once: kubectl reports the first rule that applies
    d = dep(updated=1, total=3, available=0)
    assert "1 out of 2 new replicas" in rollout_state(d)[1]


def test_progress_deadline_exceeded_raises():
    cond = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "sto-dep-1" has timed out progressing.'}
    with pytest.raises(RolloutFailed, match="exceeded its progress deadline") as info:
        rollout_state(dep(updated=1, conditions=[cond]))
    assert "timed out progressing" in info.value.hint


def test_deadline_ignored_until_generation_observed():
    # kubectl only looks at conditions once the controller has seen the latest spec
    cond = {"type": "Progressing", "reason": "ProgressDeadlineExceeded"}
    assert rollout_state(dep(generation=4, observed=3, conditions=[cond]))[0] is False


def test_empty_status_is_waiting_not_error():
    d = {"metadata": {"name": "x", "generation": 1}, "spec": {"replicas": 1}}
    assert rollout_state(d) == (False, "Waiting for deployment spec update to be observed...")


def test_zero_replicas_is_done():
    assert rollout_state(dep(replicas=0, updated=0, total=0, available=0))[0] is True


# --- pods ------------------------------------------------------------------------------------
@pytest.mark.parametrize("reason", ["CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull",
                                    "CreateContainerConfigError", "InvalidImageName"])
def test_pod_problem_fatal(reason):
    p = pod("p", "sto-app", waiting={"reason": reason, "message": "boom"})
    assert pod_problem(p) == ("sto-app", reason, "boom")


@pytest.mark.parametrize("waiting", [None, {"reason": "ContainerCreating"}, {"reason": "PodInitializing"}])
def test_pod_problem_transient(waiting):
    assert pod_problem(pod("p", "sto-app", waiting=waiting)) is None


def test_pod_problem_in_init_container():
    p = pod("p", "sto-app")
    p["status"]["initContainerStatuses"] = [
        {"name": "init", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]
    assert pod_problem(p)[:2] == ("init", "ImagePullBackOff")


def test_pod_summary_mentions_state_and_restarts():
    p = pod("sto-dep-abc", "sto-app", ready=False, restarts=3,
            waiting={"reason": "CrashLoopBackOff", "message": "back-off 40s"})
    p["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"reason": "Error", "exitCode": 3}}
    line = pod_summary(p)
    assert "pod/sto-dep-abc" in line and "CrashLoopBackOff" in line
    assert "3 restarts" in line and "exit 3" in line


def test_newest_replicaset_matches_revision_and_owner():
    d = {"metadata": {"uid": "D", "annotations": {"deployment.kubernetes.io/revision": "2"}}}
    old = {"metadata": {"name": "old", "uid": "R1", "ownerReferences": [{"uid": "D"}],
                        "annotations": {"deployment.kubernetes.io/revision": "1"}}}
    new = {"metadata": {"name": "new", "uid": "R2", "ownerReferences": [{"uid": "D"}],
                        "annotations": {"deployment.kubernetes.io/revision": "2"}}}
    stranger = {"metadata": {"name": "other", "ownerReferences": [{"uid": "X"}],
                             "annotations": {"deployment.kubernetes.io/revision": "2"}}}
    assert newest_replicaset(d, [stranger, old, new])["metadata"]["name"] == "new"
    assert newest_replicaset({"metadata": {}}, [new]) is None


def test_pods_of_replicaset_by_owner_or_hash():
    rs = {"metadata": {"uid": "R2", "labels": {"pod-template-hash": "h2"}}}
    a = pod("a", "x", owner_uid="R2", template_hash="h2")
    b = pod("b", "x", template_hash="h2")
    c = pod("c", "x", owner_uid="R1", template_hash="h1")
    assert [p["metadata"]["name"] for p in pods_of_replicaset(rs, [a, b, c])] == ["a", "b"]


# --- the waiter ------------------------------------------------------------------------------
def live(name="sto-dep", **kw):
    d = deployment(name, replicas=2)
    d["metadata"].update(generation=1, uid="D",
                         annotations={"deployment.kubernetes.io/revision": "1"})
    d["status"] = {"observedGeneration": 1, "replicas": kw.get("total", 2),
                   "updatedReplicas": kw.get("updated", 2), "availableReplicas": kw.get("available", 2),
                   "conditions": kw.get("conditions", [])}
    return d


def with_replicaset(cluster, run="sto-app"):
    cluster.put({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                 "metadata": {"name": "sto-dep-h1", "uid": "R1", "ownerReferences": [{"uid": "D"}],
                              "labels": {"run": run, "pod-template-hash": "h1"},
                              "annotations": {"deployment.kubernetes.io/revision": "1"}}})


def test_wait_prints_progress_then_success():
    cluster, clock, lines = FakeCluster(), Clock(), []
    cluster.script("Deployment", "sto-dep", [live(available=0), live(available=0), live(available=1),
                                             live()])
    took = wait_for_rollouts(cluster, ["sto-dep"], timeout=60, out=lines.append, clock=clock,
                             sleep=clock.sleep)
    assert took == 2  # the first read is the stale-pull check's
    assert [ln.split("] ")[1] for ln in lines] == [
        'Waiting for deployment "sto-dep" rollout to finish: 0 of 2 updated replicas are available...',
        'Waiting for deployment "sto-dep" rollout to finish: 1 of 2 updated replicas are available...',
        'deployment "sto-dep" successfully rolled out',
    ]


def test_wait_heartbeat_when_nothing_changes():
    cluster, clock, lines = FakeCluster(), Clock(), []
    cluster.script("Deployment", "sto-dep", [live(available=0)] * 25 + [live()])
    wait_for_rollouts(cluster, ["sto-dep"], timeout=60, out=lines.append, clock=clock,
                      sleep=clock.sleep, heartbeat=10)
    waiting = [ln for ln in lines if "0 of 2" in ln]
    assert len(waiting) == 3  # first sight, then every 10 s
    assert waiting[1].startswith("[  10s]")


def test_wait_fails_fast_on_crashloop_with_logs():
    cluster, clock = FakeCluster(), Clock()
    cluster.put(live(available=1))
    with_replicaset(cluster)
    cluster.put(pod("sto-dep-h1-a", "sto-app", owner_uid="R1", ready=False, restarts=4,
                    waiting={"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}))
    cluster.logs[("sto-dep-h1-a", "sto-app")] = "Traceback...\nKeyError: 'STO_STORAGE'\n"
    cluster.events.append({"involvedObject": {"kind": "Pod", "name": "sto-dep-h1-a"}, "type": "Warning",
                           "reason": "BackOff", "message": "Back-off restarting failed container",
                           "count": 5})
    with pytest.raises(RolloutFailed) as info:
        wait_for_rollouts(cluster, ["sto-dep"], timeout=180, out=lambda s: None, clock=clock,
                          sleep=clock.sleep)
    msg = info.value.message
    assert clock.t == 0  # no waiting at all
    assert "CrashLoopBackOff" in msg and "sto-dep-h1-a" in msg
    assert "KeyError: 'STO_STORAGE'" in msg  # the last log lines
    assert "Back-off restarting failed container (x5)" in msg
    assert ("logs", "sto-dep-h1-a", "sto-app", True) in cluster.calls  # previous container's logs
    assert "log lines above" in info.value.hint


def test_wait_fails_fast_on_image_pull():
    cluster, clock = FakeCluster(), Clock()
    cluster.put(live(available=0))
    with_replicaset(cluster)

    def failing_pod(name):
        return pod(name, "sto-app", owner_uid="R1", ready=False,
                   waiting={"reason": "ErrImagePull", "message": "not found"})

    cluster.put(failing_pod("sto-dep-h1-a"))
    original_delete = cluster.delete

    def delete(*args, **kwargs):  # the ReplicaSet recreates the pod, which fails again
        done = original_delete(*args, **kwargs)
        cluster.put(failing_pod("sto-dep-h1-b"))
        return done

    cluster.delete = delete
    with pytest.raises(RolloutFailed, match="sto-dep-h1-b container sto-app is in ErrImagePull") as info:
        wait_for_rollouts(cluster, ["sto-dep"], timeout=180, out=lambda s: None, clock=clock,
                          sleep=clock.sleep)
    assert clock.t == 0
    assert "invoke build push" in info.value.hint


def test_crashing_pod_of_old_replicaset_does_not_fail_the_rollout():
    cluster, clock = FakeCluster(), Clock()
    cluster.script("Deployment", "sto-dep", [live(available=1, total=3), live()])
    with_replicaset(cluster)
    cluster.put(pod("sto-dep-h0-z", "sto-app", owner_uid="R0", template_hash="h0", ready=False,
                    waiting={"reason": "CrashLoopBackOff"}))
    lines = []
    took = wait_for_rollouts(cluster, ["sto-dep"], timeout=30, out=lines.append, clock=clock,
                             sleep=clock.sleep)
    # it waited for the second read (the new ReplicaSet's pods available), not failed on the old pod
    assert took == clock.t
    assert cluster.count("get", "Deployment") >= 2
    assert not any("CrashLoopBackOff" in line for line in lines)  # the old pod is not this rollout's business


def test_wait_deadline_exceeded_shows_pods():
    cluster, clock = FakeCluster(), Clock()
    cond = {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "timed out"}
    cluster.put(live(available=0, conditions=[cond]))
    with_replicaset(cluster)
    cluster.put(pod("sto-dep-h1-a", "sto-app", owner_uid="R1", ready=False))
    with pytest.raises(RolloutFailed, match="exceeded its progress deadline") as info:
        wait_for_rollouts(cluster, ["sto-dep"], timeout=180, out=lambda s: None, clock=clock,
                          sleep=clock.sleep)
    assert "pod/sto-dep-h1-a" in info.value.message


def test_wait_timeout_explains_why():
    cluster, clock = FakeCluster(), Clock()
    cluster.put(live(available=0))
    with_replicaset(cluster)
    p = pod("sto-dep-h1-a", "sto-app", owner_uid="R1", phase="Pending", ready=False)
    p["status"]["containerStatuses"] = []
    p["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                  "message": "pod has unbound immediate PersistentVolumeClaims"}]
    cluster.put(p)
    cluster.events.append({"involvedObject": {"kind": "Pod", "name": "sto-dep-h1-a"}, "type": "Warning",
                           "reason": "FailedScheduling", "message": "0/1 nodes are available"})
    with pytest.raises(RolloutFailed) as info:
        wait_for_rollouts(cluster, ["sto-dep"], timeout=5, out=lambda s: None, clock=clock,
                          sleep=clock.sleep)
    msg = info.value.message
    assert msg.startswith("timed out after 5s waiting for sto-dep")
    assert "unbound immediate PersistentVolumeClaims" in msg
    assert "FailedScheduling: 0/1 nodes are available" in msg
    assert "timeouts.rollout" in info.value.hint
    assert 5 <= clock.t <= 7


def test_wait_several_deployments():
    cluster, clock, lines = FakeCluster(), Clock(), []
    cluster.script("Deployment", "sto-dep", [live(available=0), live()])
    cluster.script("Deployment", "api-dep", [live("api-dep", available=0)] * 3 + [live("api-dep")])
    wait_for_rollouts(cluster, ["sto-dep", "api-dep"], timeout=60, out=lines.append, clock=clock,
                      sleep=clock.sleep)
    assert sum("successfully rolled out" in ln for ln in lines) == 2


def test_wait_deployment_missing():
    with pytest.raises(UserError, match="does not exist"):
        wait_for_rollouts(FakeCluster(), ["sto-dep"], timeout=5, out=lambda s: None)


def test_pods_stuck_pulling_before_the_wait_are_restarted_once():
    """`invoke up` after a deploy of an image not yet pushed: the old pod is in back-off."""
    cluster, clock, lines = FakeCluster(), Clock(), []
    cluster.script("Deployment", "sto-dep", [live(available=1), live(available=1), live()])
    with_replicaset(cluster)
    cluster.put(pod("sto-dep-h1-a", "sto-app", owner_uid="R1"))
    cluster.put(pod("sto-dep-h1-b", "sto-app", owner_uid="R1", ready=False,
                    waiting={"reason": "ImagePullBackOff", "message": "Back-off pulling image"}))
    wait_for_rollouts(cluster, ["sto-dep"], timeout=60, out=lines.append, clock=clock,
                      sleep=clock.sleep)
    assert lines[0] == "restarting pod/sto-dep-h1-b: it was stuck in ImagePullBackOff before this deploy"
    assert [c[2] for c in cluster.calls if c[0] == "delete"] == ["sto-dep-h1-b"]
    assert lines[-1].endswith('deployment "sto-dep" successfully rolled out')


def test_a_crash_loop_from_before_the_wait_is_not_restarted_but_fatal():
    cluster, clock = FakeCluster(), Clock()
    cluster.put(live(available=1))
    with_replicaset(cluster)
    cluster.put(pod("sto-dep-h1-a", "sto-app", owner_uid="R1", ready=False, restarts=3,
                    waiting={"reason": "CrashLoopBackOff"}))
    with pytest.raises(RolloutFailed, match="CrashLoopBackOff"):
        wait_for_rollouts(cluster, ["sto-dep"], timeout=60, out=lambda s: None, clock=clock,
                          sleep=clock.sleep)
    assert cluster.count("delete") == 0
