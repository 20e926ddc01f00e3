from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import Settings


def test_environment(monkeypatch):
    monkeypatch.setenv("HLM_MAX_BATCH", "8")
    monkeypatch.setenv("HLM_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("HLM_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("HLM_STUDENT_PRECISION", "fp32")
    s = Settings()
    assert s.max_batch == 8 and s.teacher_batch == 8
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.admin_token.get_secret_value() == "s3cret" and "s3cret" not in repr(s)
    assert s.student_precision == "fp32"


def test_defaults_are_closed():
    s = Settings()
    assert s.cors_origins == [] and s.admin_token is None and s.shadow_rate == 0
    assert (s.host, s.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize("kwargs", [{"default_k": 20, "max_k": 10}, {"ef": 2000}, {"shadow_rate": 1.5},
                                    {"provider": "tpu"}, {"student_precision": "int4"}])
def test_invalid(kwargs):
    with pytest.raises(ValidationError):
        Settings(**kwargs)
