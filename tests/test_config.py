"""commit.config: cluster.toml parsing and validation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from commit.config import COORDINATOR_GROUP, ConfigError, load_config, parse_config
from commit.credentials import CLIENT_SECRET_FILE, PEER_SECRET_FILE, read_secret
from consensus.settings import Durability, RaftSettings

REPO_CONFIG = Path(__file__).resolve().parent.parent / "cluster.toml"
CFG = Path("/cfg/cluster.toml")

NODES = """
[[nodes]]
id = "n1"
host = "127.0.0.1"
rpc_port = 7101
raft_port = 7111

[[nodes]]
id = "n2"
host = "127.0.0.1"
rpc_port = 7201
raft_port = 7211

[[nodes]]
id = "n3"
host = "127.0.0.1"
rpc_port = 7301
raft_port = 7311
"""


def parse(text: str, path: Path = CFG):
    return parse_config(text, path)


def parse_error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert message.startswith(f"{CFG}: "), message  # every error names the file
    return message


# -- the repository's default cluster.toml -----------------------------------------


def test_repo_cluster_toml_layout():
    config = load_config(REPO_CONFIG)
    assert [n.id for n in config.nodes] == ["n1", "n2", "n3"]
    groups = config.groups()
    assert [g.name for g in groups] == ["coord", "shard-0", "shard-1", "shard-2"]
    assert [g.index for g in groups] == [0, 1, 2, 3]
    for group in groups:
        assert group.members == ("n1", "n2", "n3")
    assert config.shard_count == 3
    assert config.durability is Durability.OS
    assert config.secret == read_secret(config.data_dir / CLIENT_SECRET_FILE)  # made by the first `node.py up`
    assert config.peer_secret is None  # a client never reads the nodes' secret
    assert config.data_dir == REPO_CONFIG.parent / "data"
    for node in config.nodes:
        specs = config.group_specs(node.id)
        assert [s.name for s in specs] == ["coord", "shard-0", "shard-1", "shard-2"]


def test_repo_cluster_toml_settings():
    config = load_config(REPO_CONFIG)
    assert config.raft.leader_fallback_timeout_s == 1.0
    assert config.raft.append_entries_use_batch is False
    assert config.limits.max_frame_bytes == 4194304
    assert config.timeouts.client_deadline_s == 20.0
    rpc = config.rpc_settings()
    assert rpc.max_frame_bytes == 4194304
    assert rpc.credentials.peer_secret is None and rpc.credentials.claim == "client"
    assert rpc.max_in_flight_per_connection == config.limits.max_in_flight_per_connection
    assert rpc.handshake_timeout_s == config.timeouts.handshake_s


# -- defaults and layout -------------------------------------------------------------


def test_minimal_config_uses_defaults():
    config = parse(NODES)
    assert config.name == "local"
    assert config.durability is Durability.OS
    assert config.secret is None
    assert config.data_dir == Path("/cfg/data")
    assert config.coordinator_members == ("n1", "n2", "n3")
    assert config.shard_members == ("n1", "n2", "n3")
    assert config.shard_count == 3
    assert config.raft == RaftSettings()


def test_float_settings_accept_integers_as_floats():
    config = parse(NODES + "[timeouts]\nrequest_s = 7\n[raft]\nmax_sessions = 10\n")
    assert config.timeouts.request_s == 7.0 and isinstance(config.timeouts.request_s, float)
    assert config.raft.max_sessions == 10 and isinstance(config.raft.max_sessions, int)


def test_group_specs_ports_paths_and_settings():
    text = (
        '[cluster]\ndata_dir = "state"\ndurability = "fsync"\nsecret = "pw"\npeer_secret = "peer-pw"\n'
        + NODES
        + '[shards]\ncount = 2\nmembers = ["n1", "n3"]\n'
        + "[raft]\nleader_fallback_timeout_s = 2.5\n"
    )
    config = parse(text)
    specs = {s.name: s for s in config.group_specs("n1")}
    assert list(specs) == ["coord", "shard-0", "shard-1"]
    shard1 = specs["shard-1"]  # index 2
    assert shard1.self_id == "n1"
    assert dict(shard1.members) == {"n1": "127.0.0.1:7113", "n3": "127.0.0.1:7313"}
    assert dict(specs["coord"].members) == {
        "n1": "127.0.0.1:7111",
        "n2": "127.0.0.1:7211",
        "n3": "127.0.0.1:7311",
    }
    assert shard1.journal_path == Path("/cfg/state/n1/shard-1.journal")
    assert shard1.dump_path == Path("/cfg/state/n1/shard-1.dump")
    assert shard1.durability is Durability.FSYNC
    assert shard1.password == "peer-pw"  # Raft is for nodes: the client secret does not open it
    assert shard1.raft.leader_fallback_timeout_s == 2.5
    # n2 is not a shard member: it only hosts the coordinator group
    assert [s.name for s in config.group_specs("n2")] == [COORDINATOR_GROUP]


def test_unknown_node_lookup_names_known_nodes():
    config = parse(NODES)
    with pytest.raises(ConfigError, match=r"no node 'n9' in \[\[nodes\]\] \(known: n1, n2, n3\)"):
        config.node("n9")


def test_load_config_resolves_relative_paths(tmp_path, monkeypatch):
    (tmp_path / "c.toml").write_text('[cluster]\ndata_dir = "d"\n' + NODES)
    monkeypatch.chdir(tmp_path)
    config = load_config("c.toml")
    assert config.path == (tmp_path / "c.toml").resolve()
    assert config.data_dir == (tmp_path / "d").resolve()
    assert config.node_dir("n2") == (tmp_path / "d" / "n2").resolve()


def test_load_config_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: cannot read")):
        load_config(missing)


# -- errors name the key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[raft]\nleader_fallback_timeout_s = 0\n", "raft.leader_fallback_timeout_s: must be positive and finite, got 0"),
        ("[raft]\nleader_fallback_timeout_s = -1.5\n", "raft.leader_fallback_timeout_s: must be positive"),
        ('[raft]\nleader_fallback_timeout_s = "1"\n', "raft.leader_fallback_timeout_s: expected int or float, got str"),
        ("[raft]\nleader_fallback_timeout_s = true\n", "raft.leader_fallback_timeout_s: expected a number, got True"),
        ("[raft]\nmax_sessions = 1.5\n", "raft.max_sessions: expected int, got float"),
        ("[raft]\nappend_entries_use_batch = 1\n", "raft.append_entries_use_batch: expected bool, got int"),
        ("[limits]\nmax_frame_bytes = 0\n", "limits.max_frame_bytes: must be positive"),
        ("[limits]\nmax_frame_bytes = 8388608\n", "limits.max_raft_frame_bytes = 33554432 must be at least 8 x"),
        ("[timeouts]\nclient_deadline_s = -2\n", "timeouts.client_deadline_s: must be positive"),
        ("[shards]\ncount = 0\n", "shards.count: must be positive"),
    ],
)
def test_bad_values_name_the_key(extra, expected):
    assert expected in parse_error(NODES + extra)


def test_section_that_is_not_a_table():
    assert "raft must be a table" in parse_error("raft = 5\n" + NODES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[cluster]\nnmae = "x"\n' + NODES, "unknown key(s): cluster.nmae"),
        (NODES + "[raft]\nleader_fallback_timeout = 1.0\n", "unknown key(s): raft.leader_fallback_timeout"),
        (NODES + "[limits]\nmax_keys = 1\nmax_vals = 2\n", "unknown key(s): limits.max_keys, limits.max_vals"),
        (NODES + "[extra]\nx = 1\n", "unknown key(s): extra"),
        ('shard = "x"\n' + NODES, "unknown key(s): shard"),
        (NODES.replace('id = "n2"', 'id = "n2"\nport = 1'), "unknown key(s): nodes[1].port"),
        (NODES + '[coordinator]\nmembers = ["n1"]\nreplicas = 3\n', "unknown key(s): coordinator.replicas"),
    ],
)
def test_unknown_keys_are_errors(text, expected):
    assert expected in parse_error(text)


def test_bad_durability():
    message = parse_error('[cluster]\ndurability = "disk"\n' + NODES)
    assert "cluster.durability: must be 'os' or 'fsync', got 'disk'" in message


def test_empty_secret_is_refused():
    assert "cluster.secret: must not be empty" in parse_error('[cluster]\nsecret = ""\n' + NODES)
    assert "cluster.peer_secret: must not be empty" in parse_error('[cluster]\npeer_secret = ""\n' + NODES)


def _config_in(tmp_path: Path, cluster: str = ""):
    path = tmp_path / "cluster.toml"
    path.write_text(f'[cluster]\ndata_dir = "data"\n{cluster}' + NODES)
    return load_config(path)


def test_a_node_makes_both_secrets_once_and_clients_read_only_the_client_one(tmp_path):
    assert _config_in(tmp_path).secret is None
    made = _config_in(tmp_path).with_secrets()
    for name, value in ((CLIENT_SECRET_FILE, made.secret), (PEER_SECRET_FILE, made.peer_secret)):
        path = tmp_path / "data" / name
        assert path.stat().st_mode & 0o777 == 0o600
        assert value and path.read_text().strip() == value
    assert made.secret != made.peer_secret
    again = _config_in(tmp_path)
    assert again.secret == made.secret and again.peer_secret is None
    assert again.with_secrets().peer_secret == made.peer_secret
    assert again.rpc_settings(as_node="n2").credentials.claim == "client"  # no peer secret, no node claim
    assert again.with_secrets().rpc_settings(as_node="n2").credentials.claim == "n2"
    assert again.with_secrets().group_specs("n1")[0].password == made.peer_secret


def test_a_secret_file_others_can_read_is_refused(tmp_path):
    _config_in(tmp_path).with_secrets()
    (tmp_path / "data" / CLIENT_SECRET_FILE).chmod(0o644)
    with pytest.raises(ConfigError, match=r"client\.secret: others may read it .*chmod 600"):
        _config_in(tmp_path)


def test_the_peer_secret_must_differ_from_the_client_secret(tmp_path):
    with pytest.raises(ConfigError, match="peer_secret must differ"):
        _config_in(tmp_path, 'secret = "same"\npeer_secret = "same"\n').with_secrets()


def test_invalid_toml():
    assert "not valid TOML" in parse_error("[[nodes]\nid = ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[cluster]\n", "[[nodes]] must define at least one node"),
        ("[nodes]\nid = \"n1\"\n", "[[nodes]] must define at least one node"),
        (NODES.replace('id = "n3"', 'id = "n1"'), "[[nodes]] ids must be unique"),
        (NODES.replace('id = "n2"', 'id = "n 2"'), "nodes[1].id: must be a non-empty name"),
        (NODES.replace('id = "n2"', 'id = ""'), "nodes[1].id: must be a non-empty name"),
        (NODES.replace("rpc_port = 7201\n", ""), "nodes[1].rpc_port: is required"),
        (NODES.replace("rpc_port = 7201", "rpc_port = 70000"), "nodes[1].rpc_port: must be a TCP port (1-65535), got 70000"),
        (NODES.replace("raft_port = 7311", "raft_port = 0"), "nodes[2].raft_port: must be a TCP port"),
    ],
)
def test_bad_nodes(text, expected):
    assert expected in parse_error(text)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[coordinator]\nmembers = ["n1", "n9"]\n', "coordinator.members: unknown node id(s) ['n9']"),
        ('[shards]\nmembers = ["n4", "n1", "n5"]\n', "shards.members: unknown node id(s) ['n4', 'n5']"),
        ("[shards]\nmembers = []\n", "shards.members: must be a non-empty list of node ids"),
        ("[shards]\nmembers = [1, 2]\n", "shards.members: must be a non-empty list of node ids"),
        ('[coordinator]\nmembers = "n1"\n', "coordinator.members: expected list, got str"),
        ('[coordinator]\nmembers = ["n1", "n1"]\n', "coordinator.members: lists a node twice"),
    ],
)
def test_bad_members(extra, expected):
    assert expected in parse_error(NODES + extra)


def test_port_collision_between_nodes_on_the_same_host():
    # n2's RPC port lands on n1's shard-0 Raft port (7111 + 1)
    message = parse_error(NODES.replace("rpc_port = 7201", "rpc_port = 7112"))
    assert "node n2: rpc_port = 7112 collides with node n1 raft_port+1 on 127.0.0.1" in message


def test_port_collision_within_one_node():
    message = parse_error(NODES.replace("rpc_port = 7101", "rpc_port = 7113"))
    assert "node n1: raft_port+2 = 7113 collides with node n1 rpc_port on 127.0.0.1" in message


def test_raft_port_blocks_overlap_depends_on_group_count():
    # Raft blocks 7111.. and 7114..: overlap only once there are more than 3 groups.
    text = NODES.replace("raft_port = 7211", "raft_port = 7114")
    assert parse(text + "[shards]\ncount = 2\n").nodes[1].raft_port == 7114
    message = parse_error(text + "[shards]\ncount = 3\n")
    assert "node n2: raft_port+0 = 7114 collides with node n1 raft_port+3" in message


def test_same_ports_on_different_hosts_are_fine():
    text = NODES.replace('host = "127.0.0.1"\nrpc_port = 7201\nraft_port = 7211',
                         'host = "127.0.0.2"\nrpc_port = 7101\nraft_port = 7111')
    config = parse(text)
    assert config.node("n2").host == "127.0.0.2"
    assert config.node("n2").rpc_port == 7101


def test_raft_port_block_must_fit_below_65536():
    message = parse_error(NODES.replace("raft_port = 7311", "raft_port = 65534"))
    assert "node n3: raft_port+2 = 65536 is not a TCP port" in message


def test_nan_timeout_is_refused():
    parse_error(NODES + "[raft]\nleader_fallback_timeout_s = nan\n")
