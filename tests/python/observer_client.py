#!/usr/bin/env python3
"""An independent Observer API client (grpcio), used by tests/tests/flowlog_e2e.rs.

Generates Python stubs from proxy/proto with grpcio-tools into a temporary directory, calls GetFlows (or
ServerStatus) and prints one JSON object per flow (proto field names). The request is given as JSON in the
protobuf JSON mapping, e.g. '{"whitelist": [{"verdict": ["DROPPED"], "protocol": ["http"]}]}'.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile


def generate(proto_dir, out_dir):
    import grpc_tools
    from grpc_tools import protoc

    wkt = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    # The well-known types come from grpcio-tools first, so the stubs import the protobuf package's Timestamp.
    rc = protoc.main([
        "protoc", f"-I{wkt}", f"-I{proto_dir}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
        "flow/flow.proto", "relay/relay.proto", "observer/observer.proto",
    ])
    if rc != 0:
        sys.exit(f"protoc failed ({rc}) on {proto_dir}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="127.0.0.1:4245")
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--request", default="{}", help="GetFlowsRequest as protobuf JSON")
    ap.add_argument("--status", action="store_true", help="call ServerStatus instead")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as out:
        for d in ("flow", "relay", "observer"):
            os.makedirs(os.path.join(out, d), exist_ok=True)
        generate(args.proto_dir, out)
        sys.path.insert(0, out)
        import grpc
        from google.protobuf import json_format

        observer_pb2 = importlib.import_module("observer.observer_pb2")
        observer_grpc = importlib.import_module("observer.observer_pb2_grpc")
        with grpc.insecure_channel(args.server) as channel:
            stub = observer_grpc.ObserverStub(channel)
            if args.status:
                resp = stub.ServerStatus(observer_pb2.ServerStatusRequest(), timeout=args.timeout)
                print(json_format.MessageToJson(resp, preserving_proto_field_name=True, indent=None))
                return
            req = json_format.Parse(args.request, observer_pb2.GetFlowsRequest())
            for resp in stub.GetFlows(req, timeout=args.timeout):
                if resp.HasField("flow"):
                    print(json_format.MessageToJson(resp.flow, preserving_proto_field_name=True, indent=None),
                          flush=True)


if __name__ == "__main__":
    main()
