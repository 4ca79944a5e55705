"""Shared fixtures: sample films made once per session, and a process cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cluster import REPO, Cluster

ARTIFACTS = REPO / "test-artifacts"

#: The figures every run of the overlay benchmark reports in its JSON (bench tests).
FIGURES = {
    "continuity": ["min", "median", "mean"],
    "on_time_fraction": ["min", "median", "mean"],
    "startup_s": ["min", "median", "mean"],
    "lag_s": ["median", "p99", "max"],
    "repair": ["failures", "time_to_next_block_s", "blocks_missed", "client_rejoin_took_s"],
    "tree": ["depth_histogram", "best_depth_histogram", "children_vs_max", "loops", "over_limit"],
    "load": ["bytes_sent", "jain_index_relays", "server_bytes_sent", "server_upload_bytes_per_s"],
    "cost": ["client_cpu_s", "client_peak_rss_mib", "server_cpu_s", "server_peak_rss_mib"],
}


def _sample_films(out: Path, channels: int, seconds: int, size: str) -> Path:
    """Sample films cut by separa.py into ``out``."""
    subprocess.run([sys.executable, str(REPO / "separa.py"), "--sample",
                    "--channels", str(channels), "--seconds-long", str(seconds),
                    "--size", size, "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture(scope="session")
def films(tmp_path_factory) -> Path:
    """Two short sample films (12 s = 6 blocks each)."""
    return _sample_films(tmp_path_factory.mktemp("filme"), 2, 12, "320x180")


@pytest.fixture(scope="session")
def long_film(tmp_path_factory) -> Path:
    """One film of 60 s = 30 blocks: no block repeats within a client's latest few."""
    return _sample_films(tmp_path_factory.mktemp("filme-long"), 1, 60, "160x90")


@pytest.fixture
def cluster(tmp_path, films, request):
    """A Cluster in the test's own folder; every process is stopped after it.

    When the test fails, the process logs are copied to test-artifacts/.
    """
    with Cluster(tmp_path, films) as c:
        yield c
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        dest = ARTIFACTS / request.node.name
        dest.mkdir(parents=True, exist_ok=True)
        for log in tmp_path.glob("*.log"):
            shutil.copy(log, dest / log.name)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def browser():
    """Debian's headless Chromium driven by selenium (TOOLCHAIN.md), quit after the test."""
    if not shutil.which("chromedriver") or not shutil.which("chromium"):
        pytest.fail("chromium and chromium-driver are required (scripts/ensure-system.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()
