"""The bucket holding the 99th percentile of one encoder's accepted searches between two
/metrics scrapes: ``python p99.py before.txt after.txt [ENCODER]`` prints its upper bound in ms
(or nan); the encoder is the student unless named.

Shared by sweep.sh and ab_sweep.sh; the same histogram the service exports and Prometheus reads.
"""

import sys

from prometheus_client.parser import text_string_to_metric_families


def buckets(path: str, encoder: str = "student") -> dict[float, float]:
    out = {}
    for family in text_string_to_metric_families(open(path).read()):
        for s in family.samples:
            labels = s.labels
            if (s.name == "hlm_request_duration_seconds_bucket" and labels.get("route") == "/v1/search"
                    and labels.get("encoder") == encoder and labels.get("status") == "200"):
                out[float(labels["le"])] = s.value
    return out


def p99_bucket_ms(before: str, after: str, encoder: str = "student") -> str:
    a, b = buckets(before, encoder), buckets(after, encoder)
    delta = sorted((le, b[le] - a.get(le, 0)) for le in b)
    total = delta[-1][1] if delta else 0
    return next((f"{le * 1000:g}" for le, n in delta if total and n >= 0.99 * total), "nan")


if __name__ == "__main__":
    print(p99_bucket_ms(*sys.argv[1:4]))
