"""Waiting for Deployments like `kubectl rollout status`, failing fast with the reason.

``rollout_state(deployment)`` is kubectl's rule (pkg/polymorphichelpers/rollout_status.go,
DeploymentStatusViewer.Status) as a pure function on the API's dict.

``wait_for_rollouts(cluster, names, timeout)`` is one ``poll()`` whose check prints progress and
stops early, with the pod's events and last log lines, when the rollout cannot succeed.
"""
from __future__ import annotations

import time

from twotier.errors import UserError
from twotier.kube import objects
from twotier.kube.objects import container_statuses, dig, pod_selector
from twotier.poll import Timeout
from twotier.poll import poll as poll_until

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
TIMED_OUT_REASON = "ProgressDeadlineExceeded"

# Container waiting reasons that won't fix themselves without a change from the user.
FATAL_WAITING_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
}


class RolloutFailed(UserError):
    """The rollout cannot finish (deadline exceeded, pod crash-looping, image not pullable)."""


def rollout_state(dep: dict) -> tuple[bool, str]:
    """(done, message) for a Deployment, exactly kubectl's rule; raises RolloutFailed on deadline."""
    name = objects.name(dep) or "?"
    if dig(dep, "metadata.generation", 0) <= dig(dep, "status.observedGeneration", 0):
        cond = objects.condition(dep, "Progressing")
        if cond.get("reason") == TIMED_OUT_REASON:
            raise RolloutFailed(f'deployment "{name}" exceeded its progress deadline',
                                f"see why: `invoke status`, `invoke logs`; {cond.get('message', '')}".strip())
        replicas = dig(dep, "spec.replicas")  # kubectl: only when set; the API always defaults it to 1
        updated = dig(dep, "status.updatedReplicas", 0)
        total = dig(dep, "status.replicas", 0)
        available = dig(dep, "status.availableReplicas", 0)
        if replicas is not None and updated < replicas:
            return False, (f'Waiting for deployment "{name}" rollout to finish: {updated} out of '
                           f"{replicas} new replicas have been updated...")
        if total > updated:
            return False, (f'Waiting for deployment "{name}" rollout to finish: {total - updated} '
                           "old replicas are pending termination...")
        if available < updated:
            return False, (f'Waiting for deployment "{name}" rollout to finish: {available} of '
                           f"{updated} updated replicas are available...")
        return True, f'deployment "{name}" successfully rolled out'
    return False, "Waiting for deployment spec update to be observed..."


# --------------------------------------------------------------------------------------------
# Pods: which belong to the rollout, which are stuck, and why
# --------------------------------------------------------------------------------------------
def newest_replicaset(dep: dict, replicasets: list[dict]) -> dict | None:
    """The ReplicaSet of the Deployment's current revision (owned by it), if it exists yet."""
    uid = dig(dep, "metadata.uid")
    revision = objects.annotation(dep, REVISION_ANNOTATION)
    if not revision:
        return None
    return next((rs for rs in replicasets if (not uid or objects.owned_by(rs, uid))
                 and objects.annotation(rs, REVISION_ANNOTATION) == revision), None)


def pods_of_replicaset(rs: dict, pods: list[dict]) -> list[dict]:
    hash_ = objects.labels(rs).get("pod-template-hash")
    uid = dig(rs, "metadata.uid")
    return [pod for pod in pods if objects.owned_by(pod, uid)
            or (hash_ and objects.labels(pod).get("pod-template-hash") == hash_)]


def pod_problem(pod: dict) -> tuple[str, str, str] | None:
    """(container, reason, message) when a pod is stuck in a state that won't heal, else None."""
    for cs in container_statuses(pod):
        waiting = dig(cs, "state.waiting", {})
        if waiting.get("reason") in FATAL_WAITING_REASONS:
            return cs.get("name", ""), waiting["reason"], waiting.get("message", "")
    return None


def pod_summary(pod: dict) -> str:
    """One line: name, phase, readiness, each container's state, restarts."""
    parts = [f"pod/{objects.name(pod)}", dig(pod, "status.phase", "Unknown")]
    if objects.terminating(pod):
        parts.append("Terminating")
    scheduled = objects.condition(pod, "PodScheduled")
    if scheduled.get("status") == "False":
        parts.append(f"unschedulable: {scheduled.get('message') or scheduled.get('reason')}")
    for cs in container_statuses(pod):
        state = cs.get("state") or {}
        if "waiting" in state:
            w = state["waiting"] or {}
            desc = f"waiting {w.get('reason', '')}".strip()
            if w.get("message"):
                desc += f": {w['message']}"
        elif "terminated" in state:
            t = state["terminated"] or {}
            desc = f"terminated {t.get('reason', '')} exit {t.get('exitCode')}"
        else:
            desc = "running" + (", ready" if cs.get("ready") else ", not ready")
        restarts = cs.get("restartCount") or 0
        last = dig(cs, "lastState.terminated")
        if restarts:
            desc += f", {restarts} restarts"
            if last:
                desc += f" (last: {last.get('reason')} exit {last.get('exitCode')})"
        parts.append(f"{cs.get('name')}: {desc}")
    return " | ".join(parts)


def event_lines(events: list[dict], limit: int = 6) -> list[str]:
    return [f"{ev.get('type', '')} {ev.get('reason', '')}: {ev.get('message', '').strip()}"
            + (f" (x{ev['count']})" if (ev.get("count") or 1) > 1 else "") for ev in events[-limit:]]


def diagnose_pod(cluster, pod: dict, log_lines: int = 20) -> list[str]:
    """Status, recent events and last log lines of one pod, indented for an error message."""
    name = pod["metadata"]["name"]
    lines = [pod_summary(pod)]
    lines += ["  event: " + e for e in event_lines(cluster.events_for("Pod", name))]
    for cs in container_statuses(pod):
        restarted = (cs.get("restartCount") or 0) > 0
        state = cs.get("state") or {}
        crashed = restarted or "terminated" in state
        if not crashed:
            continue
        logs = cluster.pod_logs(name, container=cs.get("name"), tail=log_lines,
                                previous=restarted and "terminated" not in state)
        tail = [ln for ln in (logs or "").splitlines() if ln.strip()][-log_lines:]
        lines.append(f"  last {len(tail)} log lines of {name}/{cs.get('name')}:")
        lines += [f"    {ln}" for ln in tail] or ["    (empty)"]
    return lines


def current_pods(cluster, dep: dict) -> list[dict]:
    """Pods of the Deployment's newest ReplicaSet (old ones may crash: the rollout replaces them)."""
    sel = pod_selector(dep)
    if not sel:
        return []
    rs = newest_replicaset(dep, cluster.list("apps/v1", "ReplicaSet", label_selector=sel))
    if rs is None:
        return []
    return pods_of_replicaset(rs, cluster.list("v1", "Pod", label_selector=sel))


def diagnose_deployment(cluster, dep: dict) -> list[str]:
    name, sel = dep["metadata"]["name"], pod_selector(dep)
    lines = [f"deployment/{name}: " + rollout_state_safe(dep)]
    lines += ["  event: " + e for e in event_lines(cluster.events_for("Deployment", name), 3)]
    pods = current_pods(cluster, dep) or (cluster.list("v1", "Pod", label_selector=sel) if sel else [])
    if not pods:
        lines.append("  no pods yet (check the ReplicaSet's events: `kubectl describe rs`)")
        for rs in cluster.list("apps/v1", "ReplicaSet", label_selector=sel) if sel else []:
            lines += ["  event: " + e for e in
                      event_lines(cluster.events_for("ReplicaSet", rs["metadata"]["name"]), 3)]
    for pod in pods:
        lines += ["  " + ln for ln in diagnose_pod(cluster, pod)]
    return lines


def rollout_state_safe(dep: dict) -> str:
    try:
        return rollout_state(dep)[1]
    except RolloutFailed as err:
        return err.message


# --------------------------------------------------------------------------------------------
PULL_REASONS = {"ImagePullBackOff", "ErrImagePull"}


def restart_stale_pulls(cluster, names: list[str], out=print) -> list[str]:
    """Delete pods that were already failing to pull their image before this wait began.

    Such a pod may be waiting out the kubelet's back-off (up to 5 minutes) for an image that has
    just been pushed (`invoke up` after a deploy of an image that wasn't pushed yet). Its
    ReplicaSet recreates it at once and the new pod pulls right away; if the image is still
    missing, the new pod fails and the waiter stops with the reason."""
    restarted = []
    for name in names:
        dep = cluster.get("apps/v1", "Deployment", name)
        if dep is None:
            continue
        for pod in current_pods(cluster, dep):
            problem = pod_problem(pod)
            if problem and problem[1] in PULL_REASONS and not objects.terminating(pod):
                pod_name = pod["metadata"]["name"]
                out(f"restarting pod/{pod_name}: it was stuck in {problem[1]} before this deploy")
                cluster.delete("v1", "Pod", pod_name)
                restarted.append(pod_name)
    return restarted


def wait_for_rollouts(cluster, names: list[str], timeout: float, out=print,
                      heartbeat: float = 10.0, clock=time.monotonic, sleep=time.sleep) -> float:
    """Wait until every named Deployment has rolled out; returns the seconds it took. The check
    fails fast with the reason when a rollout cannot succeed."""
    start = clock()
    restart_stale_pulls(cluster, names, out)
    pending = list(names)
    last_msg: dict[str, str] = {}
    last_print = [start]

    def rolled_out() -> bool:
        now = clock()
        for name in list(pending):
            done, msg = _progress(cluster, name)
            if done:
                out(f"[{now - start:4.0f}s] {msg}")
                pending.remove(name)
            elif msg != last_msg.get(name) or now - last_print[0] >= heartbeat:
                out(f"[{now - start:4.0f}s] {msg if name in msg else f'{name}: {msg}'}")
                last_msg[name] = msg
                last_print[0] = now
        return not pending

    try:
        poll_until(rolled_out, timeout=timeout, interval=1.0, what="rollout", clock=clock, sleep=sleep)
    except Timeout:
        deps = [cluster.get("apps/v1", "Deployment", name) for name in pending]
        details = [line for dep in deps if dep for line in diagnose_deployment(cluster, dep)]
        raise RolloutFailed(
            f"timed out after {timeout:.0f}s waiting for {', '.join(pending)} to become ready\n"
            + "\n".join(details),
            "the pod status and events above say why; raise twotier.timeouts.rollout "
            "(INVOKE_TWOTIER_TIMEOUTS_ROLLOUT or --timeout) if it is only slow") from None
    return clock() - start


def _progress(cluster, name: str) -> tuple[bool, str]:
    """(done, message) of one Deployment's rollout; raises RolloutFailed when it cannot succeed:
    deadline exceeded, or a pod of the new ReplicaSet stuck in a state that won't heal."""
    dep = cluster.get("apps/v1", "Deployment", name)
    if dep is None:
        raise UserError(f"deployment {name!r} does not exist (deleted while waiting?)", "run `invoke deploy` again")
    try:
        done, msg = rollout_state(dep)
    except RolloutFailed as err:
        raise RolloutFailed(err.message + "\n" + "\n".join(diagnose_deployment(cluster, dep)), err.hint) from None
    for pod in [] if done else current_pods(cluster, dep):
        problem = pod_problem(pod)
        if problem:
            container, reason, message = problem
            raise RolloutFailed(
                f"deployment {name!r} cannot become ready: pod {objects.name(pod)} "
                f"container {container} is in {reason}" + (f" ({message})" if message else "") + "\n"
                + "\n".join(diagnose_pod(cluster, pod)),
                _hint_for(reason))
    return done, msg


def _hint_for(reason: str) -> str:
    if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"):
        return ("the image can't be pulled: build and push it first (`invoke build push`, or "
                "`invoke up`), and check twotier.registry is a registry the cluster can pull from")
    if reason == "CrashLoopBackOff":
        return "the container keeps exiting: its log lines above say why; fix it and deploy again"
    return "fix the pod's configuration shown above and deploy again"
