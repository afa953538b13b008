"""A bounded load run like the fault sweep's (benchmarks/serving.py --drop runs the full 16
clients x 100 requests): 4 gRPC clients x 25 requests against the server process with
batching on, good and bad requests mixed, and a new version copied in non-atomically
mid-run. No good request fails, every bad one is refused, and the new version serves once
it is complete."""

import threading

import numpy as np
import pytest

from sdl_keras.serving import clients as serving_client
from sdl_keras.serving.load import LoadRequest, run_load, start_server_process
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny
from tests.sdl_keras.serving import servers

CLIENTS, REQUESTS, DROP_AT, SWITCHED_BY = 4, 25, 5, 20


def mixed_requests(photos, new_version_served, drop):
    """request_for(client, i): every fourth request bad (four kinds, one a JPEG whose header is
    fine and whose data is not, so it fails inside a batch of good ones); client 0's sixth starts
    the drop; from the 21st on, requests wait until the new version serves."""
    vectors = servers.float_array(4, tiny.EMBED_DIM)
    nan_vectors = np.full((2, tiny.EMBED_DIM), np.nan, np.float32)
    truncated = photos[0][: len(photos[0]) // 2]

    def request_for(index, i):
        if index == 0 and i == DROP_AT:
            drop.start()
        if i >= SWITCHED_BY:
            new_version_served.wait(120)
        image = np.array([photos[(index + i) % len(photos)]], dtype=object)
        if i % 4 == 3:
            kind = (index + i // 4) % 4
            return LoadRequest(*[({"images": np.array([b"garbage bytes"], dtype=object)}, "serving_default"),
                                 ({"images": np.array([truncated], dtype=object)}, "serving_default"),
                                 ({"images": np.array([], dtype=object)}, "matrix"),
                                 ({"images": image, "tag_vectors": nan_vectors}, "score_tags")][kind], good=False)
        if i % 4 == 1:
            return LoadRequest({"images": image, "tag_vectors": vectors}, "score_tags")
        return LoadRequest({"images": image}, "matrix" if i % 8 == 2 else "serving_default")

    return request_for


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("load")
    servers.export_versions(root / "source", versions=(1,))
    servers.copy_version(root / "source" / "1", root / "tiny" / "1")
    return root


def test_mixed_load_while_a_new_version_is_copied_in(base, tmp_path):
    source = base / "source"
    with start_server_process(f"--model_base_path={base / 'tiny'}", "--file_system_poll_wait_seconds=0.2",
                              "--enable_batching", f"--batching_parameters_file={source / 'batching_parameters.txt'}",
                              "--grpc_workers=16") as server:
        control = serving_client.GrpcClient(server.grpc)
        served = threading.Event()

        def copy_in_and_watch():
            servers.copy_version(source / "1", base / "tiny" / "2", pause_s=1.0)  # saved_model.pb first
            servers.wait_for(lambda: servers.statuses(control, "tiny").get(2) == "AVAILABLE", 120, "version 2")
            served.set()

        drop = threading.Thread(target=copy_in_and_watch)
        result = run_load(lambda: serving_client.GrpcClient(server.grpc), "tiny",
                          mixed_requests(servers.images(6), served, drop), CLIENTS, REQUESTS, time_limit_s=240)
        drop.join(120)
        assert result.failures == 0, result.errors
        assert result.requests == CLIENTS * REQUESTS
        assert result.refused == CLIENTS * sum(1 for i in range(REQUESTS) if i % 4 == 3)  # each bad one, refused
        good_after_switch = CLIENTS * sum(1 for i in range(SWITCHED_BY, REQUESTS) if i % 4 != 3)
        assert result.versions[1] > 0 and result.versions[2] >= good_after_switch, result.versions
        servers.wait_for(lambda: servers.statuses(control, "tiny") == {2: "AVAILABLE", 1: "END"}, 60,
                         "version 1 to be unloaded")
        control.close()
        assert server.stop() == 0
        assert "Traceback" not in server.log()


if __name__ == "__main__":
    testing.run(__file__)
