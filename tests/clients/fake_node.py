"""A stand-in for the node daemon's streaming endpoints, for testing the apiserver's proxy.

Serves kubelet's paths over HTTPS and requires a client certificate from the cluster CA:
  GET /containerLogs/NS/POD/CONTAINER   -> text lines naming the pod, the caller and the query
  GET /exec/NS/POD/CONTAINER?command=.. -> WebSocket (v5/v4.channel.k8s.io): the command line on
                                           stdout, then the status ("false" exits 1)
  GET /portForward/NS/POD?ports=P,..     -> WebSocket (v4.channel.k8s.io, the channel protocol of
                                           kube-rs and Python): echoes "echo:<data>" per port
Usage: fake_node.py IP PORT CERT KEY CA
"""
import base64
import hashlib
import http.server
import json
import ssl
import struct
import sys
import urllib.parse

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(opcode, payload):
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


def read_frame(rfile):
    """One client frame (masked): (opcode, payload), or (None, b"") at end of stream."""
    head = rfile.read(2)
    if len(head) < 2:
        return None, b""
    opcode = head[0] & 0x0F
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = bytearray(rfile.read(n))
    for i in range(len(data)):
        data[i] ^= mask[i % 4]
    return opcode, bytes(data)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def caller(self):
        cert = self.connection.getpeercert()
        for rdn in cert.get("subject", ()):
            for k, v in rdn:
                if k == "commonName":
                    return v
        return "?"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        q = urllib.parse.parse_qs(url.query)
        if parts[0] == "containerLogs" and len(parts) == 4:
            body = "".join(
                [
                    f"log line 1 of {parts[1]}/{parts[2]}/{parts[3]}\n",
                    f"caller {self.caller()}\n",
                    f"tailLines {q.get('tailLines', ['-'])[0]}\n",
                ]
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if parts[0] == "exec" and len(parts) == 4 and self.headers.get("Upgrade", "").lower() == "websocket":
            offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            proto = next((p for p in ("v5.channel.k8s.io", "v4.channel.k8s.io") if p in offered), None)
            if proto is None:
                self.send_error(400, "no supported subprotocol")
                return
            accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.send_header("Sec-WebSocket-Protocol", proto)
            self.end_headers()
            cmd = q.get("command", [])
            self.wfile.write(frame(2, b"\x01" + f"ran {' '.join(cmd)} in {parts[3]} for {self.caller()}\n".encode()))
            if cmd[:1] == ["false"]:
                status = {
                    "metadata": {},
                    "status": "Failure",
                    "message": "command terminated with non-zero exit code: exit status 1",
                    "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": "1"}]},
                }
            else:
                status = {"metadata": {}, "status": "Success"}
            self.wfile.write(frame(2, b"\x03" + json.dumps(status).encode()))
            self.wfile.write(frame(8, struct.pack(">H", 1000)))
            self.wfile.flush()
            self.close_connection = True
            return
        if parts[0] == "portForward" and len(parts) == 3 and self.headers.get("Upgrade", "").lower() == "websocket":
            offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
            if "v4.channel.k8s.io" not in offered:
                self.send_error(400, "no supported subprotocol")
                return
            ports = [int(p) for p in q.get("ports", [""])[0].split(",") if p]
            accept = base64.b64encode(hashlib.sha1((self.headers["Sec-WebSocket-Key"] + GUID).encode()).digest()).decode()
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.send_header("Sec-WebSocket-Accept", accept)
            self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
            self.end_headers()
            # Each port: data channel 2i and error channel 2i+1, each first told its port.
            for i, port in enumerate(ports):
                for ch in (2 * i, 2 * i + 1):
                    self.wfile.write(frame(2, bytes([ch]) + struct.pack("<H", port)))
            self.wfile.flush()
            while True:
                opcode, data = read_frame(self.rfile)
                if opcode is None or opcode == 8:
                    break
                if opcode == 2 and len(data) > 1 and data[0] % 2 == 0:
                    self.wfile.write(frame(2, bytes([data[0]]) + b"echo:" + data[1:]))
                    self.wfile.flush()
            self.close_connection = True
            return
        self.send_error(404)

    def log_message(self, *args):
        pass


def main():
    ip, port, cert, key, ca = sys.argv[1:6]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    srv = http.server.ThreadingHTTPServer((ip, int(port)), Handler)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    print("ready", flush=True)
    srv.serve_forever()


main()
