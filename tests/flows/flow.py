"""The user's path, tested as a user runs it: each command in its own process, typed as in a
shell, and what a user checks after each step.

    train -> evaluate -> export -> serving.server + serving.client -> tag -> search build, query

Commands run from a working folder with the checkout's configs/ linked into it, so
`--flagfile=configs/X.flags` and the flagfiles' relative paths (runs/, saved_models/,
data/demo/) read exactly as their comments write them. A run is shrunk by flag overrides
after the real flagfile only (`SHRINK`: a tiny backbone, 32-pixel images, one epoch of two
steps); every other setting is the flagfile's, and config.json must record it.
"""

import json
import math
import os
import subprocess
import sys
import time

from tests import testing

TRACEBACK = "Traceback (most recent call last)"
SHRINK = (
    "--backbone=small_cnn", "--backbone_weights=none", "--image_size=32", "--batch_size=8", "--epochs=1",
    "--steps_per_epoch=2",
)


def flag_settings(args):
    """{name: raw value} of flag arguments as absl reads them: --name=value, --name (true),
    --noname (false); later ones win."""
    settings = {}
    for arg in args:
        name, equals, value = arg.lstrip("-").partition("=")
        if equals:
            settings[name] = value
        elif name.startswith("no"):
            settings[name[2:]] = "false"
        else:
            settings[name] = "true"
    return settings


def flagfile_settings(path):
    """`flag_settings` of a flagfile's flag lines."""
    with open(path, encoding="utf-8") as f:
        return flag_settings([line.strip() for line in f if line.strip().startswith("--")])


def same_setting(value, raw):
    """Whether a config value is what the flag text `raw` sets."""
    if value is None:
        return raw.lower() in ("none", "")
    if isinstance(value, bool):
        return raw.lower() in (("true", "1") if value else ("false", "0"))
    if isinstance(value, (int, float)):
        return math.isclose(float(raw), value)
    if isinstance(value, (list, tuple)):
        return [int(v) for v in raw.split(",")] == list(value)
    return raw == value


def tail(text, chars=4000):
    return text if len(text) <= chars else "..." + text[-chars:]


class Flow:
    """A user's shell in `folder`: runs commands one process each, checks each exits 0
    without a traceback, and keeps what each printed and how long it took."""

    def __init__(self, folder):
        self.folder = os.fspath(folder)
        os.makedirs(self.folder, exist_ok=True)
        os.symlink(os.path.join(testing.REPO_ROOT, "configs"), os.path.join(self.folder, "configs"))
        self.times = []
        self.done = []

    def path(self, *parts):
        return os.path.join(self.folder, *parts)

    def run(self, module, *args, timeout=300):
        command = [sys.executable, "-m", module, *args]
        start = time.monotonic()
        done = subprocess.run(command, cwd=self.folder, env=testing.python_env(), capture_output=True, text=True,
                              timeout=timeout)
        self.times.append((f"{module} {args[0] if args and not args[0].startswith('-') else ''}".strip(),
                           time.monotonic() - start))
        self.done.append(done)
        self.check(command, done.returncode, done.stdout, done.stderr)
        return done

    @staticmethod
    def check(command, returncode, stdout, stderr):
        shown = f"$ {' '.join(command)}\n--- stdout:\n{tail(stdout)}\n--- stderr:\n{tail(stderr)}"
        assert returncode == 0, f"exit status {returncode}\n{shown}"
        assert TRACEBACK not in stderr and TRACEBACK not in stdout, f"a traceback\n{shown}"

    def output(self, module):
        """What the first command of `module` printed (stdout, then stderr)."""
        done = next(d for d in self.done if d.args[2] == module)
        return done.stdout + done.stderr

    def timing(self):
        return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.times)

    # -- the steps -------------------------------------------------------------------------
    def train(self, flagfile, *overrides):
        """`sdl_keras.train --flagfile=FLAGFILE OVERRIDES SHRINK`: a complete run directory
        whose config.json records the flagfile's settings and the overrides. Returns the
        RunDirectory (relative to the folder, as the flagfile's --output_dir names it)."""
        from sdl_keras.run_dir import RunDirectory

        args = [f"--flagfile={flagfile}", *overrides, *SHRINK]
        done = self.run("sdl_keras.train", *args, timeout=600)
        settings = flagfile_settings(self.path(flagfile))
        settings.update(flag_settings(args[1:]))
        output_dir = settings["output_dir"]
        assert f"Run written to {output_dir}" in done.stdout, done.stdout
        run = RunDirectory(self.path(output_dir))
        assert run.missing() == [], run.missing()
        recorded = run.config().flat()
        wrong = {name: (raw, recorded.get(name, "not a TrainConfig field")) for name, raw in settings.items()
                 if name not in recorded or not same_setting(recorded[name], raw)}
        assert not wrong, f"config.json does not record these settings (flag text, recorded): {wrong}"
        return run

    def evaluate(self, run, *flags):
        """`sdl_keras.evaluate FLAGS --run_dir=RUN`: the ZSL and GZSL table, and results.json
        with finite figures for each K of the run."""
        done = self.run("sdl_keras.evaluate", *flags, f"--run_dir={os.path.relpath(run.path, self.folder)}")
        for task in ("ZSL", "GZSL"):
            assert any(line.startswith("SDL (this run)") and f"| {task} " in line for line in done.stdout.splitlines()), (
                done.stdout)
        assert "Results written to" in done.stdout, done.stdout
        with open(run.results_path, encoding="utf-8") as f:
            results = json.load(f)
        for ranker in ("model", "random"):
            figures = results[ranker]
            for k in run.config().evaluation.ks:
                for task in ("zsl", "gzsl"):
                    assert {f"{task}/mAP", f"{task}/P@{k}", f"{task}/R@{k}", f"{task}/F1@{k}"} <= set(figures), figures
            assert all(math.isfinite(v) for v in figures.values()), figures
            assert figures["zsl/num_images"] > 0 and figures["gzsl/num_images"] > 0, figures
        return results

    def export(self, run, name):
        """`sdl_keras.export --flagfile=configs/export.flags --run_dir=RUN --name=NAME`:
        saved_models/NAME/1 with saved_model.pb, and models.config naming the model.
        Returns saved_models/NAME, relative to the folder."""
        done = self.run("sdl_keras.export", "--flagfile=configs/export.flags",
                        f"--run_dir={os.path.relpath(run.path, self.folder)}", f"--name={name}")
        base = os.path.join("saved_models", name)
        assert f"to {os.path.join(base, '1')}" in done.stdout, done.stdout
        assert os.path.isfile(self.path(base, "1", "saved_model.pb")), os.listdir(self.path(base))
        with open(self.path(base, "models.config"), encoding="utf-8") as f:
            assert f'name: "{name}"' in f.read()
        return base

    def serve(self, base, name, images, vocabulary):
        """A `sdl_keras.serving.server` process (configs/serve.flags, port 0), asked by the
        `sdl_keras.serving.client` command for the `images`' tags; SIGTERM ends it cleanly.
        Returns the client's records, checked against the vocabulary."""
        from sdl_keras.serving.load import start_server_process

        command = ["sdl_keras.serving.server", "--flagfile=configs/serve.flags", f"--model_name={name}",
                   f"--model_base_path={base}", f"--monitoring_config_file={base}/monitoring.config"]
        start = time.monotonic()
        server = start_server_process(*command[1:], rest=True, cwd=self.folder, env=testing.python_env())
        try:
            done = self.run("sdl_keras.serving.client", "--flagfile=configs/client.flags", f"--server={server.grpc}",
                            f"--model={name}", "--format=jsonl", *images)
        finally:
            returncode = server.stop()  # SIGTERM: the server drains and exits 0
        self.times.append(("sdl_keras.serving.server (to its end)", time.monotonic() - start))
        log = server.log()
        os.remove(server.log_path)
        self.check(command, returncode, "", log)
        records = [json.loads(line) for line in done.stdout.splitlines()]
        assert [r["image"] for r in records] == list(images), done.stdout
        top_k = int(flagfile_settings(self.path("configs", "export.flags"))["top_k"])
        for record in records:
            check_tags(record, vocabulary, top_k)
        return records

    def tag(self, base, images):
        """`sdl_keras.tag --flagfile=configs/tag.flags --model=BASE --output=tags.jsonl IMAGES`."""
        done = self.run("sdl_keras.tag", "--flagfile=configs/tag.flags", f"--model={base}", "--output=tags.jsonl",
                        *images)
        assert f"Tagged {len(images)} of {len(images)} images" in done.stderr, tail(done.stderr)
        with open(self.path("tags.jsonl"), encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def search(self, run, images, ids, tag, flags=(), top_n=5):
        """`sdl_keras.search build FLAGS --index=index --run_dir=RUN IMAGES` indexes every image
        once (`ids`, the ids it indexes them by), and `query FLAGS --index=index --tag=TAG
        --json` returns hits among them, best first."""
        common = [*flags, "--index=index"]
        run_dir = os.path.relpath(run.path, self.folder)
        done = self.run("sdl_keras.search", "build", *common, f"--run_dir={run_dir}", *images)
        assert f"{len(ids)} images added, 0 skipped, {len(ids)} in the index" in done.stderr, tail(done.stderr)
        everything = self.query(common, tag, len(ids))
        assert sorted(h["id"] for h in everything) == sorted(ids)
        hits = self.query(common, tag, top_n)
        assert hits == everything[:top_n]
        return hits

    def query(self, common, tag, top_n):
        done = self.run("sdl_keras.search", "query", *common, f"--tag={tag}", f"--top_n={top_n}", "--json")
        result = json.loads(done.stdout)
        assert result["query"] == [tag], result
        scores = [h["score"] for h in result["hits"]]
        assert len(scores) == top_n and scores == sorted(scores, reverse=True), result
        return result["hits"]


def check_tags(record, vocabulary, top_k):
    """A serving_default record: the export's K best tags, from the vocabulary, best first,
    with their unseen flags and dominant rows."""
    tags = record["tags"]
    assert len(tags) == min(top_k, len(vocabulary)) and len(set(tags)) == len(tags), record
    assert set(tags) <= set(vocabulary.tags), record
    assert record["scores"] == sorted(record["scores"], reverse=True), record
    unseen = set(vocabulary.unseen_tags)
    assert record["unseen"] == [t in unseen for t in tags], record
    assert len(record["rows"]) == len(tags), record


def user_path(user, flagfile, name, data, images, index_images, indexed_ids, unseen_tag, evaluate_flags=(),
              search_flags=()):
    """Train with FLAGFILE and the `data` flags, evaluate, export as NAME, serve it and tag
    `images` through the gRPC client and with `sdl_keras.tag` (the same tags), then index
    `index_images` (search build's image arguments, indexed as `indexed_ids`) and query
    them for an unseen tag, all in the Flow `user`. Returns the run directory."""
    run = user.train(flagfile, *data)
    user.evaluate(run, *evaluate_flags)
    base = user.export(run, name)
    vocabulary = run.vocabulary()
    assert unseen_tag in vocabulary.unseen_tags, (unseen_tag, vocabulary.unseen_tags)
    served = user.serve(base, name, images, vocabulary)
    tagged = user.tag(base, images)
    assert [r["image"] for r in tagged] == list(images)
    for client, local in zip(served, tagged):
        assert [client[k] for k in ("tags", "rows", "unseen")] == [local[k] for k in ("tags", "rows", "unseen")], (
            client, local)
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(client["scores"], local["scores"])), (client, local)
        # A calibrated run's export serves probabilities too, through the server as offline.
        assert ("probabilities" in client) == ("probabilities" in local) == (run.calibration() is not None)
        assert all(math.isclose(a, b, abs_tol=1e-5) for a, b in zip(client.get("probabilities", ()),
                                                                    local.get("probabilities", ()))), (client, local)
    user.search(run, index_images, indexed_ids, unseen_tag, search_flags)
    print(f"{name}: {user.timing()}")
    return run
