#!/usr/bin/python3
"""A Hubble client the way a Python user writes one: message classes generated
by protoc from Myelin's proto/ (Hubble's own .proto files, same numbers), and
grpcio calling observer.Observer over the agent's unix socket.

Usage: observer_client.py PROTO_DIR OUT_DIR SOCKET SOURCE_POD

Prints one JSON object: the ServerStatus response, and the flows GetFlows
returned for a whitelist filter on the source pod and verdict FORWARDED plus a
blacklist on ICMP (so the test can check the filters were applied server-side).
Exits non-zero with a message on any error (a harness failure, not a result).
"""
import json
import subprocess
import sys


def main():
    proto_dir, out_dir, socket, source_pod = sys.argv[1:5]
    # Generate the message modules, as a user of the published .proto files does.
    subprocess.run(
        ["protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
         "flow/flow.proto", "relay/relay.proto", "observer/observer.proto"],
        check=True,
    )
    sys.path.insert(0, out_dir)
    import grpc
    from google.protobuf import json_format
    from flow import flow_pb2
    from observer import observer_pb2

    channel = grpc.insecure_channel(f"unix://{socket}")
    server_status = channel.unary_unary(
        "/observer.Observer/ServerStatus",
        request_serializer=observer_pb2.ServerStatusRequest.SerializeToString,
        response_deserializer=observer_pb2.ServerStatusResponse.FromString,
    )
    get_flows = channel.unary_stream(
        "/observer.Observer/GetFlows",
        request_serializer=observer_pb2.GetFlowsRequest.SerializeToString,
        response_deserializer=observer_pb2.GetFlowsResponse.FromString,
    )

    status = server_status(observer_pb2.ServerStatusRequest(), timeout=10)
    request = observer_pb2.GetFlowsRequest(
        number=1000,
        whitelist=[flow_pb2.FlowFilter(source_pod=[source_pod], verdict=[flow_pb2.FORWARDED])],
        blacklist=[flow_pb2.FlowFilter(protocol=["icmp"])],
    )
    flows = []
    for response in get_flows(request, timeout=20):
        if response.WhichOneof("response_types") != "flow":
            continue
        f = response.flow
        flows.append({
            "source": f"{f.source.namespace}/{f.source.pod_name}",
            "destination": f"{f.destination.namespace}/{f.destination.pod_name}",
            "verdict": flow_pb2.Verdict.Name(f.verdict),
            "l4": f.l4.WhichOneof("protocol") or "",
            "node_name": response.node_name,
        })
    print(json.dumps({
        "status": json_format.MessageToDict(status, preserving_proto_field_name=True),
        "flows": flows,
    }))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # the test reports this as a harness failure
        print(f"observer_client.py: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
