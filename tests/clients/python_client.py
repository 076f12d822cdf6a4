"""The Python `kubernetes` client against kuberaft: list, create, strategic patch, watch, delete.

Usage: python_client.py KUBECONFIG. Prints one line per check; exits non-zero on failure.
"""
import sys
import threading

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
apps = client.AppsV1Api()

ver = client.VersionApi().get_code()
assert ver.minor == "33", ver
print("version", ver.git_version)

names = [n.metadata.name for n in core.list_namespace().items]
assert "kube-system" in names, names
print("namespaces", ",".join(sorted(names)))

cms = core.list_namespaced_config_map("default")
start_rv = cms.metadata.resource_version
seen = []


def watcher():
    w = watch.Watch()
    for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=start_rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED" and ev["object"].metadata.name == "py-cm":
            w.stop()


t = threading.Thread(target=watcher)
t.start()

cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py-cm", labels={"from": "python"}), data={"a": "1"})
created = core.create_namespaced_config_map("default", cm)
assert created.metadata.uid, created
# A dict body is sent as a strategic merge patch.
core.patch_namespaced_config_map("py-cm", "default", {"data": {"b": "2"}})
got = core.read_namespaced_config_map("py-cm", "default")
assert got.data == {"a": "1", "b": "2"}, got.data
print("patched", sorted(got.data.items()))

try:
    core.create_namespaced_config_map("default", cm)
    raise SystemExit("duplicate create succeeded")
except ApiException as e:
    assert e.status == 409, e.status
    print("duplicate", e.status, e.reason)

dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="py-web"),
    spec=client.V1DeploymentSpec(
        replicas=2,
        selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
        ),
    ),
)
apps.create_namespaced_deployment("default", dep)
apps.patch_namespaced_deployment_scale("py-web", "default", {"spec": {"replicas": 4}})
assert apps.read_namespaced_deployment("py-web", "default").spec.replicas == 4
print("scaled", 4)

core.delete_namespaced_config_map("py-cm", "default")
t.join(timeout=15)
kinds = [k for k, n in seen if n == "py-cm"]
assert kinds == ["ADDED", "MODIFIED", "DELETED"], seen
print("watched", ",".join(kinds))

try:
    core.read_namespaced_config_map("py-cm", "default")
    raise SystemExit("read after delete succeeded")
except ApiException as e:
    assert e.status == 404, e.status
    print("gone", e.status)
print("ok")
