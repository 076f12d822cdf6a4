"""The Python client's port-forward (WebSocket channel protocol, ?ports=) through the apiserver.

Usage: python_portforward.py KUBECONFIG POD PORT. Sends "ping", prints what comes back.
"""
import sys

from kubernetes import client, config
from kubernetes.stream import portforward

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
port = int(sys.argv[3])
pf = portforward(core.connect_get_namespaced_pod_portforward, sys.argv[2], "default", ports=str(port))
sock = pf.socket(port)
sock.setblocking(True)
sock.sendall(b"ping")
got = b""
while len(got) < len(b"echo:ping"):
    chunk = sock.recv(1024)
    if not chunk:
        break
    got += chunk
print(got.decode(), end="")
pf.close()
