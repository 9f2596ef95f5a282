"""The defaults table of docs/server-behaviour.md is what the classes hold."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import pytest

import sockserve
from sockserve import aio
from sockserve.defaults import ProductionDefaults, production

TABLE = Path(__file__).parents[2] / "docs" / "server-behaviour.md"
ROW = re.compile(r"^\| `(\w+)`( \((pre-fork|async)\))? \| ([^|]+) \| ([^|]+) \|", re.M)

# The class each option's row describes.
CLASSES: dict[str | None, type] = {None: sockserve.ThreadingTCPServer,
                                   "pre-fork": sockserve.PreForkTCPServer,
                                   "async": aio.AsyncTCPServer}
DATAGRAM_OPTIONS = {"max_packet_size", "drop_oversized_packets"}


def value(text: str) -> Any:
    """A value as the table writes it: None, True, "pause", 5, 30 s, 64 KiB."""
    text = text.strip()
    if text in ("None", "True", "False"):
        return {"None": None, "True": True, "False": False}[text]
    if text.startswith('"'):
        return text.strip('"')
    if number := re.fullmatch(r"(\d+) (s|KiB)", text):
        amount = int(number[1])
        return float(amount) if number[2] == "s" else amount * 1024
    return int(text)


ROWS = [(option, kind, value(stdlib), value(ours))
        for option, _, kind, stdlib, ours in ROW.findall(TABLE.read_text())]


def test_the_table_has_its_rows() -> None:
    assert len(ROWS) >= 20


@pytest.mark.parametrize("option, kind, stdlib, ours", ROWS, ids=[row[0] for row in ROWS])
def test_each_default_is_the_documented_one(option: str, kind: str | None, stdlib: Any,
                                            ours: Any) -> None:
    server_class = CLASSES[kind or None]
    if option in DATAGRAM_OPTIONS:
        server_class = sockserve.UDPServer
    assert getattr(server_class, option) == stdlib
    assert getattr(production(server_class), option) == ours


@pytest.mark.parametrize("option", ["allow_reuse_address", "unmap_ipv4_clients"])
def test_production_leaves_some_options_off_for_datagram_servers(option: str) -> None:
    # SO_REUSEADDR would let another UDP socket bind the same port (CPython bpo-37228);
    # an unmapped client address could not be replied to through server.socket.
    assert getattr(production(sockserve.UDPServer), option) is False
    assert getattr(production(sockserve.ThreadingUDPServer), option) is False
    assert getattr(production(sockserve.ThreadingTCPServer), option) is True

    class Mine(ProductionDefaults, sockserve.UDPServer):
        pass

    assert getattr(Mine, option) is False
    assert getattr(production(sockserve.UDPServer, **{option: True}), option) is True


def test_production_udp_servers_keep_their_port_to_themselves() -> None:
    with production(sockserve.UDPServer)(("127.0.0.1", 0), sockserve.BaseRequestHandler) as server:
        assert not server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError):
                other.bind(server.server_address)
