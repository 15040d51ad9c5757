"""The flash kernels' autotuner (minitx/kernels/flash_tuning.py) without a GPU: the key buckets the lengths
(N itself is not in it), the fastest config wins, a config that fails to launch is skipped, and choices are
shared through the cache file and logged row by row."""

import json

import pytest

pytest.importorskip("triton")

from minitx.kernels import flash_tuning  # noqa: E402

FLAGS = dict(HAS_MASK=False, HAS_LEFT=False, HAS_RIGHT=True, HAS_ALIBI=False, VARLEN=False, HAS_DROPOUT=False,
             BOTTOM_RIGHT=False, BLOCK_D=128)


def test_key_buckets_lengths_so_a_sweep_over_n_tunes_twice_not_per_n():
    keys = {flash_tuning.tune_key("fwd", 90, "bfloat16", n, n, FLAGS) for n in (1024, 2048, 4096, 8192, 16384)}
    assert len(keys) == 2
    assert all("4096" not in k and "triton" in k for k in keys)
    assert flash_tuning.tune_key("fwd", 90, "bfloat16", 4096, 4096, {**FLAGS, "HAS_RIGHT": False}) not in keys
    assert flash_tuning.tune_key("fwd", 90, "float16", 4096, 4096, FLAGS) not in keys
    assert flash_tuning.length_bucket(100, 5000) == "long"  # the longer of N and M decides


def test_choose_takes_the_fastest_and_skips_configs_that_fail():
    times = {(64, 32, 4, 2): 2.0, (128, 64, 8, 3): 1.5, (128, 128, 8, 2): None}

    def bench(c):
        if times[c] is None:
            raise RuntimeError("out of resources: shared memory")
        return times[c]
    best, tried = flash_tuning.choose(list(times), bench)
    assert best == (128, 64, 8, 3) and tried[(128, 128, 8, 2)] == float("inf")
    with pytest.raises(RuntimeError, match="out of resources"):
        flash_tuning.choose([(128, 128, 8, 2)], bench)


def test_choices_are_cached_in_a_file_and_logged_row_by_row(tmp_path, monkeypatch):
    cache, log = tmp_path / "cache.json", tmp_path / "log.jsonl"
    monkeypatch.setenv("MINITX_FLASH_TUNE_CACHE", str(cache))
    monkeypatch.setenv("MINITX_FLASH_TUNE_LOG", str(log))
    monkeypatch.setattr(flash_tuning, "CHOICES", {})
    monkeypatch.setattr(flash_tuning, "_LOADED", {"path": None})
    flash_tuning._cache()
    flash_tuning._record("k1", dict(config=[64, 32, 4, 2], registers=168, spills=0))
    flash_tuning._record("k2", dict(config=[128, 64, 8, 3], registers=230, spills=0))
    assert [json.loads(line)["key"] for line in log.read_text().splitlines()] == ["k1", "k2"]
    monkeypatch.setattr(flash_tuning, "CHOICES", {})  # another process: reads the file
    monkeypatch.setattr(flash_tuning, "_LOADED", {"path": None})
    assert flash_tuning._cache()["k2"]["config"] == [128, 64, 8, 3]


def test_an_accumulating_kernel_is_reset_between_tuning_and_the_launch_that_counts(monkeypatch):
    """The atomic dQ buffer (flash.24) collects every timing run; `reset` zeroes it before the real launch."""
    from minitx.kernels import flash_configs

    buffer = [0]
    calls = []

    class Kernel:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                buffer[0] += 1  # like an atomic add into dQ
                calls.append(kwargs["BLOCK_M"])
                return type("Compiled", (), {"n_regs": 100, "n_spills": 0})()
            return launch

    monkeypatch.setattr(flash_configs, "_device_limits", lambda: (90, 232448))
    monkeypatch.setattr(flash_tuning, "CHOICES", {})
    monkeypatch.setattr(flash_tuning, "_LOADED", {"path": None})
    monkeypatch.delenv("MINITX_FLASH_TUNE_CACHE", raising=False)
    monkeypatch.delenv("MINITX_FLASH_TUNE_LOG", raising=False)
    monkeypatch.setattr(flash_tuning.triton.testing, "do_bench", lambda fn, **kw: (fn(), fn(), 1.0)[-1])
    import torch
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "test GPU")
    row = flash_tuning.launch_tuned(Kernel(), "atomic", lambda meta: (1,), (), dict(FLAGS), 4096, 4096,
                                    torch.bfloat16, reset=lambda: buffer.__setitem__(0, 0))
    assert buffer[0] == 1  # only the launch that counts is in the buffer
    assert len(calls) > 1 and row["registers"] == 100 and tuple(row["config"]) in \
        [tuple(c) for c in flash_configs.accepted("atomic", 90, 128)]
