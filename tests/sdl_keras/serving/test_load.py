"""A bounded load run like the fault sweep's (benchmarks/serving.py runs the full 16 clients x
100 requests): 4 gRPC clients x 25 requests against the server process with batching on,
good and bad requests mixed, and a new version copied in non-atomically mid-run. No good
request fails, every bad one is refused, and the new version serves once it is complete."""

from sdl_keras.serving import clients as serving_client
from sdl_keras.serving.load import VersionDrop, mixed_requests, run_load, start_server_process
from tests import testing
from tests.sdl_keras.saved_model import tiny_export as tiny
from tests.sdl_keras.serving import servers

CLIENTS, REQUESTS = 4, 25


def test_mixed_load_while_a_new_version_is_copied_in(tmp_path):
    source = servers.export_versions(tmp_path / "source", versions=(1,))
    servers.copy_version(source / "1", tmp_path / "tiny" / "1")
    # The user's flagfile, shrunk: this model, polled often, batching on.
    with start_server_process(f"--flagfile={testing.REPO_ROOT}/configs/serve.flags",
                              f"--model_base_path={tmp_path / 'tiny'}", "--model_name=tiny",
                              f"--monitoring_config_file={source / 'monitoring.config'}",
                              "--file_system_poll_wait_seconds=0.2", "--enable_batching",
                              f"--batching_parameters_file={source / 'batching_parameters.txt'}", "--grpc_workers=16",
                              rest=True) as server:
        control = serving_client.GrpcClient(server.grpc)
        drop = VersionDrop(source / "1", tmp_path / "tiny" / "2", 2, lambda: servers.statuses(control, "tiny"),
                           start_at=5, served_from=20)
        requests = drop.requests(mixed_requests(servers.images(6), tiny.EMBED_DIM))
        result = run_load(lambda: serving_client.GrpcClient(server.grpc), "tiny", requests, CLIENTS, REQUESTS,
                          time_limit_s=240)
        assert drop.join(), "version 2 never became AVAILABLE"
        assert result.failures == 0, result.errors
        assert result.requests == CLIENTS * REQUESTS
        assert result.refused == CLIENTS * sum(1 for i in range(REQUESTS) if i % 4 == 3)  # each bad one, refused
        good_after_switch = CLIENTS * sum(1 for i in range(20, REQUESTS) if i % 4 != 3)
        assert result.versions[1] > 0 and result.versions[2] >= good_after_switch, result.versions
        servers.wait_for(lambda: servers.statuses(control, "tiny") == {2: "AVAILABLE", 1: "END"}, 60,
                         "version 1 to be unloaded")
        control.close()
        assert server.stop() == 0
        assert "Traceback" not in server.log()


if __name__ == "__main__":
    testing.run(__file__)
