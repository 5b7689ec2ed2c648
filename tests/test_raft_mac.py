"""consensus.raft_mac: a Raft frame is PySyncObj's payload plus an HMAC of the peer secret, checked before use."""

from __future__ import annotations

import pytest
from pysyncobj.encryptor import getEncryptor

from consensus.raft_mac import BadFrame, LinkMac

PAYLOAD = b"zlib(pickle(message))"


@pytest.fixture(scope="module")
def mac() -> LinkMac:
    return LinkMac("peer-secret")  # PBKDF2: made once


def test_a_signed_frame_gives_back_its_payload_and_timestamp(mac: LinkMac) -> None:
    token = mac.encrypt_at_time(PAYLOAD, 1234)
    assert mac.extract_timestamp(token) == 1234
    assert mac.decrypt(token) == PAYLOAD
    assert PAYLOAD in token  # signed, not encrypted: the threat model claims no confidentiality


def test_a_frame_signed_with_another_secret_or_changed_anywhere_is_refused(mac: LinkMac) -> None:
    token = mac.encrypt_at_time(PAYLOAD, 7)
    forged = [LinkMac("guessed").encrypt_at_time(PAYLOAD, 7), b"", b"\x81", token[:-1], token + b"x"]
    forged += [token[:i] + bytes([token[i] ^ 1]) + token[i + 1:] for i in range(len(token))]
    for frame in forged:
        with pytest.raises(BadFrame):
            mac.decrypt(frame)
        with pytest.raises(BadFrame):
            mac.extract_timestamp(frame)


def test_a_fernet_token_or_a_bare_pickle_is_refused(mac: LinkMac) -> None:
    for frame in (getEncryptor("peer-secret").encrypt_at_time(PAYLOAD, 7), b"\x80\x04\x95" + PAYLOAD):
        with pytest.raises(BadFrame):
            mac.decrypt(frame)
