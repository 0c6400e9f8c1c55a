"""The tracing bench's report and the environment it gives each sidecar."""

from __future__ import annotations

from bench.tracing import Round, report, tracing_env


def test_report_gives_each_round_and_the_median_ratios() -> None:
    rounds = [
        Round(False, 1000, 800, 1.0, 1.2),
        Round(True, 900, 700, 1.1, 1.4),
        Round(False, 1100, 820, 1.0, 1.2),
        Round(True, 850, 600, 1.2, 1.5),
        Round(False, 500, 400, 1.0, 1.2),
        Round(True, 950, 640, 1.1, 1.4),
    ]
    text = report(rounds)
    assert text.count("\non ") == 3 and text.count("\noff ") == 3
    assert "W1 Run traced/untraced = 90% of the untraced rate (medians; target 80%)" in text
    assert "W2 traced/untraced = 80%" in text
    assert "cpu per instance x1.17" in text


def test_tracing_env_samples_everything_or_disables_the_sdk() -> None:
    assert tracing_env(None) == {"OTEL_SDK_DISABLED": "true"}
    on = tracing_env("http://127.0.0.1:4399")
    assert on["OTEL_TRACES_EXPORTER"] == "otlp"
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:4399"
