"""Instance and signal ids: random ones are version-4 UUIDs, a request_id's are stable."""

from __future__ import annotations

import uuid

from okra_sidecar.instances import INSTANCE_ID_RE, random_uuid, run_instance_id


def test_a_random_id_is_a_version_4_uuid_in_its_canonical_text() -> None:
    ids = {random_uuid() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text
        assert INSTANCE_ID_RE.fullmatch(text)


def test_a_run_without_request_id_gets_a_fresh_id_and_one_with_it_the_same() -> None:
    assert run_instance_id("a.b.1.0.0", "") != run_instance_id("a.b.1.0.0", "")
    first = run_instance_id("a.b.1.0.0", "req-1")
    assert first == run_instance_id("a.b.1.0.0", "req-1")
    assert first != run_instance_id("a.b.1.0.0", "req-2")
    assert uuid.UUID(first).version == 5
