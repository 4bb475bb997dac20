"""The bench harness: reading wrk's output and writing nginx configurations (pure, no binary
needed), and the generated configurations and wrk runs against a real nginx (`make test`
installs nginx and wrk)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench._harness import (
    WRK_SUMMARY_LUA,
    BenchError,
    Processes,
    Ratio,
    free_port,
    nginx_command,
    nginx_proxy_config,
    nginx_upstream_config,
    parse_wrk_output,
    run_wrk,
    start_nginx,
    tool_path,
    top_functions,
    wrk_command,
    write_nginx_config,
)

WRK_TEXT = """\
Running 2s test @ http://127.0.0.1:18080/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.30ms    0.92ms  12.51ms   80.13%
    Req/Sec    24.20k     6.10k   37.36k    72.50%
  Latency Distribution
     50%    1.11ms
     75%    1.52ms
     90%    2.17ms
     99%    4.75ms
  96615 requests in 2.01s, 15.20MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 7
Requests/sec:  47991.29
Transfer/sec:      7.55MB
"""

WRK_WITH_SUMMARY = """\
Running 1s test @ http://127.0.0.1:45437/x
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   355.70us    1.58ms  23.16ms   97.07%
    Req/Sec    15.22k     2.25k   18.71k    70.00%
  Latency Distribution
     50%  126.00us
     75%  142.00us
     90%  190.00us
     99%    8.46ms
  30327 requests in 1.01s, 4.77MB read
Requests/sec:  30135.34
Transfer/sec:      4.74MB
WRK_JSON {"requests":30327,"duration_us":1006360,"bytes":5003955,"errors":{"connect":0,"read":0,"write":0,"status":4,"timeout":0},"latency_us":{"mean":355.70,"stdev":1579.46,"max":23160,"p50":126,"p75":142,"p90":190,"p99":8462,"p999":21048}}
"""


def test_parse_wrk_text_reads_rate_percentiles_and_errors() -> None:
    result = parse_wrk_output(WRK_TEXT)

    assert result.requests == 96615
    assert result.duration_s == pytest.approx(2.01)
    assert result.rps == pytest.approx(47991.29)
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == pytest.approx((1.11, 2.17, 4.75))
    assert result.mean_ms == pytest.approx(1.30)
    assert result.max_ms == pytest.approx(12.51)
    assert result.errors == {"read": 3, "timeout": 2, "status": 7}
    assert result.error_count == 12


def test_parse_wrk_prefers_the_exact_summary_line() -> None:
    result = parse_wrk_output(WRK_WITH_SUMMARY)

    assert result.requests == 30327
    assert result.rps == pytest.approx(30327 / 1.00636)
    # Microsecond values from the Lua hook, not wrk's rounded "8.46ms".
    assert result.p99_ms == pytest.approx(8.462)
    assert result.p50_ms == pytest.approx(0.126)
    assert result.errors == {"status": 4}


def test_parse_wrk_converts_every_unit() -> None:
    text = WRK_TEXT.replace("1.11ms", "900.00us").replace("4.75ms", "1.50s").replace("2.17ms", "1.00m")

    result = parse_wrk_output(text)

    assert (result.p50_ms, result.p90_ms, result.p99_ms) == pytest.approx((0.9, 60_000.0, 1500.0))


def test_parse_wrk_without_latency_distribution_says_the_fix() -> None:
    text = "\n".join(line for line in WRK_TEXT.splitlines() if "%" not in line or "Latency" in line)

    with pytest.raises(BenchError, match="--latency"):
        parse_wrk_output(text)


def test_parse_wrk_failure_quotes_the_output() -> None:
    with pytest.raises(BenchError, match="unable to connect"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_command_keeps_threads_at_most_connections() -> None:
    args = wrk_command("http://127.0.0.1:1/", connections=1, threads=4, duration=2.4, script=Path("/x.lua"))

    assert args == ["wrk", "-t1", "-c1", "-d2s", "--timeout=5s", "--latency", "-s", "/x.lua", "http://127.0.0.1:1/"]


def test_nginx_upstream_config_serves_the_body_on_every_port(tmp_path: Path) -> None:
    config = nginx_upstream_config(tmp_path, [8081, 8082])

    assert "daemon off;" in config and "master_process on;" in config and "worker_processes 1;" in config
    assert "listen 127.0.0.1:8081 " in config and "listen 127.0.0.1:8082 " in config
    assert config.count("return 200 '{\"ok\":true}';") == 2
    assert "access_log off;" in config
    assert f"pid {tmp_path / 'upstream.pid'};" in config


def test_nginx_upstream_config_refuses_a_quote_in_the_body(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="single quote"):
        nginx_upstream_config(tmp_path, [8081], body="it's")


def test_nginx_proxy_config_pools_upstream_connections(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    config = nginx_proxy_config(tmp_path, 9000, "127.0.0.1:8081", access_log=log, keepalive=32)

    assert "server 127.0.0.1:8081;" in config and "keepalive 32;" in config
    # Upstream keepalive needs HTTP/1.1 and an empty Connection header.
    assert "proxy_http_version 1.1;" in config and 'proxy_set_header Connection "";' in config
    assert f"access_log {log} combined buffer=64k flush=1s;" in config
    assert "access_log off;" in nginx_proxy_config(tmp_path, 9000, "127.0.0.1:8081", access_log=None)


def test_nginx_proxy_config_refuses_an_upstream_url(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="'http://127.0.0.1:8081' must be host:port"):
        nginx_proxy_config(tmp_path, 9000, "http://127.0.0.1:8081", access_log=None)


def test_wrk_command_names_the_binary_it_is_given() -> None:
    args = wrk_command("http://127.0.0.1:1/", connections=8, threads=2, duration=1, script=None, wrk="/opt/wrk")

    assert args == ["/opt/wrk", "-t2", "-c8", "-d1s", "--timeout=5s", "--latency", "http://127.0.0.1:1/"]


def test_nginx_command_runs_the_given_binary_on_the_config_with_its_prefix(tmp_path: Path) -> None:
    args = nginx_command(tmp_path, tmp_path / "proxy.conf", nginx="/opt/nginx")

    assert args == ["/opt/nginx", "-p", f"{tmp_path}/", "-c", str(tmp_path / "proxy.conf"),
                    "-e", str(tmp_path / "proxy.error.log")]


def test_a_missing_tool_is_named_with_its_install_command() -> None:
    with pytest.raises(BenchError, match=r"^no-such-tool-x is not installed; install it with: sudo apt-get update "
                                         r"&& sudo apt-get install -y no-such-tool-x"):
        tool_path("no-such-tool-x")


def test_generated_configs_pass_nginx_syntax_check(tmp_path: Path) -> None:
    nginx = tool_path("nginx")
    for name, config in (
        ("upstream", nginx_upstream_config(tmp_path, [8081, 8082])),
        ("proxy", nginx_proxy_config(tmp_path, 9000, "127.0.0.1:8081", access_log=tmp_path / "a.log")),
    ):
        path = write_nginx_config(tmp_path, name, config)
        result = subprocess.run(
            [nginx, "-t", "-q", "-p", f"{tmp_path}/", "-c", str(path), "-e", str(tmp_path / "e.log")],
            capture_output=True, text=True,
        )
        assert result.returncode == 0, result.stderr


def test_run_wrk_measures_the_generated_nginx_upstream(tmp_path: Path) -> None:
    port = free_port()
    script = tmp_path / "summary.lua"
    script.write_text(WRK_SUMMARY_LUA)
    with Processes(tmp_path / "logs") as processes:
        start_nginx(processes, tmp_path, "upstream", nginx_upstream_config(tmp_path, [port]), f"http://127.0.0.1:{port}/")

        result = run_wrk(f"http://127.0.0.1:{port}/", connections=2, threads=1, duration=1, script=script)

    # Read from the Lua summary line: exact counts, no errors against nginx's `return 200`.
    assert result.requests > 0 and result.rps > 0
    assert result.errors == {}
    assert 0 < result.p50_ms <= result.p99_ms


def test_ratio_compares_with_its_target_in_its_direction() -> None:
    assert Ratio("rate", 0.12, "%", 0.10).met is True
    assert Ratio("rate", 0.08, "%", 0.10).met is False
    assert Ratio("added", 0.25, "ms", 0.3, "at_most").met is True
    assert Ratio("added", 0.35, "ms", 0.3, "at_most").met is False
    assert Ratio("info", 1.5, "×").met is None
    assert Ratio("rate", 0.123, "%").formatted(0.123) == "12.3%"


PY_SPY_RAW = """\
Runner.run (asyncio/runners.py:118);Proxy.__call__ (/work/main/facade/proxy.py:338);Proxy._forward (/work/main/facade/proxy.py:453);StreamWriter._write (/venv/lib/python3.11/site-packages/aiohttp/http_writer.py:104) 6
Runner.run (asyncio/runners.py:118);Proxy.__call__ (/work/main/facade/proxy.py:338);Proxy._forward (/work/main/facade/proxy.py:460);StreamWriter._write (/venv/lib/python3.11/site-packages/aiohttp/http_writer.py:110) 2
Runner.run (asyncio/runners.py:118);Proxy.__call__ (/work/main/facade/proxy.py:340) 2
not a stack line
"""


def test_top_functions_ranks_by_self_samples_and_folds_lines() -> None:
    hot = top_functions(PY_SPY_RAW, limit=2)

    assert [function.name for function in hot] == [
        "StreamWriter._write (aiohttp/http_writer.py)",
        "Proxy.__call__ (facade/proxy.py)",
    ]
    assert hot[0].self_pct == pytest.approx(80.0) and hot[0].total_pct == pytest.approx(80.0)
    # Counted once per stack although the function appears on two lines of it.
    assert hot[1].self_pct == pytest.approx(20.0) and hot[1].total_pct == pytest.approx(100.0)
    assert top_functions("") == []
