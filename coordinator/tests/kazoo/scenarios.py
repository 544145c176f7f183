"""kazoo, the Python ZooKeeper client, against the bundled coordinator: its API and its recipes
used as their users use them, each result checked here.

Run by `coordinator/tests/kazoo.rs`:

    python3 scenarios.py SCENARIO HOSTS

SCENARIO is one of `api`, `watches`, `recipes` or `move`. Every check prints `ok <name>`; the
first failed check prints `FAIL <name>: <why>` and the script exits 1. Every wait has a
deadline. `move` talks to the test on its standard streams: it prints `ready <session id>`
once connected (to the first of HOSTS, which is never shuffled) and waits for a line telling it
that server is gone, then checks that the session moved with its ephemeral and that kazoo's
watch recipes go on through the new server.
"""

import sys
import threading
import time
import traceback

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    LockTimeout,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NoChildrenForEphemeralsError,
    NotEmptyError,
    RolledBackError,
)
from kazoo.protocol.states import EventType
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

# How long any one expected event may take.
DEADLINE = 20.0


class Failed(Exception):
    pass


def ok(name):
    print("ok " + name, flush=True)


def check(name, cond, why=""):
    if not cond:
        raise Failed("%s: %s" % (name, why))
    ok(name)


def raises(name, exc, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except exc:
        ok(name)
        return
    except Exception as e:  # noqa: BLE001 - the wrong error is the failure being reported
        raise Failed("%s: expected %s, got %r" % (name, exc.__name__, e))
    raise Failed("%s: expected %s, got no error" % (name, exc.__name__))


def client(hosts, **kwargs):
    zk = KazooClient(hosts=hosts, timeout=10.0, randomize_hosts=False, **kwargs)
    zk.start(timeout=DEADLINE)
    return zk


def wait_for(name, event):
    if not event.wait(DEADLINE):
        raise Failed("%s: nothing within %.0f s" % (name, DEADLINE))


def close(*clients):
    for zk in clients:
        zk.stop()
        zk.close()


class Calls:
    """What a watch recipe's callback was given, in order, to wait on."""

    def __init__(self, recipe):
        self.recipe = recipe
        self.seen = []
        self.changed = threading.Condition()

    def add(self, value):
        with self.changed:
            self.seen.append(value)
            self.changed.notify_all()

    def wait_last(self, name, want):
        with self.changed:
            if not self.changed.wait_for(lambda: self.seen[-1:] == [want], DEADLINE):
                raise Failed("%s: %s saw %r, wanted %r last" % (name, self.recipe, self.seen, want))

    def wait_any(self, name):
        with self.changed:
            if not self.changed.wait_for(lambda: self.seen, DEADLINE):
                raise Failed("%s: %s never called back" % (name, self.recipe))


def api(hosts):
    zk = client(hosts)
    zk.ensure_path("/k/api")
    check("ensure_path", zk.exists("/k/api") is not None)

    path = zk.create("/k/api/node", b"one")
    check("create returns the path", path == "/k/api/node", path)
    data, stat = zk.get("/k/api/node")
    check("get", data == b"one" and stat.version == 0 and stat.dataLength == 3, (data, stat))
    check("stat times", stat.ctime > 0 and stat.ctime == stat.mtime, stat)
    raises("create twice: NodeExistsError", NodeExistsError, zk.create, "/k/api/node", b"")
    raises("create without parent: NoNodeError", NoNodeError, zk.create, "/k/api/none/x", b"")

    made, made_stat = zk.create("/k/api/deep/er/node", b"d", makepath=True, include_data=True)
    check("create2 through makepath", made == "/k/api/deep/er/node" and made_stat.dataLength == 1, made)

    stat = zk.set("/k/api/node", b"two", version=0)
    check("set with version", stat.version == 1, stat)
    raises("set with a stale version: BadVersionError", BadVersionError, zk.set, "/k/api/node", b"x", version=0)
    raises("get of a missing node: NoNodeError", NoNodeError, zk.get, "/k/api/missing")
    check("exists of a missing node is None", zk.exists("/k/api/missing") is None)

    # The counter is the parent's child version: every create and delete under it so far.
    base = zk.exists("/k/api").cversion
    seqs = [zk.create("/k/api/seq-", b"", sequence=True) for _ in range(3)]
    check(
        "sequential names count from the parent's cversion",
        seqs == ["/k/api/seq-%010d" % (base + i) for i in range(3)],
        (base, seqs),
    )
    eph = zk.create("/k/api/eph", b"", ephemeral=True)
    session_id = zk.client_id[0]
    check("ephemeral owner is the session", zk.exists(eph).ephemeralOwner == session_id, zk.exists(eph))
    raises(
        "no children under an ephemeral",
        NoChildrenForEphemeralsError,
        zk.create,
        "/k/api/eph/child",
        b"",
    )

    children, parent_stat = zk.get_children("/k/api", include_data=True)
    check(
        "get_children with its stat",
        sorted(children) == sorted(["node", "deep", "eph"] + [s.rsplit("/", 1)[1] for s in seqs])
        and parent_stat.numChildren == len(children),
        (children, parent_stat),
    )
    raises("delete of a non-empty node: NotEmptyError", NotEmptyError, zk.delete, "/k/api/deep")
    zk.delete("/k/api/deep", recursive=True)
    check("recursive delete", zk.exists("/k/api/deep") is None)

    # A transaction: all or nothing, with the failing operation named.
    t = zk.transaction()
    t.create("/k/api/tx1", b"a")
    t.check("/k/api/node", 1)
    t.set_data("/k/api/node", b"three", version=1)
    t.delete(seqs[0])
    results = t.commit()
    check("transaction committed", results[0] == "/k/api/tx1" and results[1] is True, results)
    check("transaction applied", zk.get("/k/api/node")[0] == b"three" and not zk.exists(seqs[0]))
    t = zk.transaction()
    t.create("/k/api/tx2", b"")
    t.check("/k/api/node", 99)
    results = t.commit()
    check(
        "failed transaction rolled back",
        isinstance(results[0], RolledBackError) and isinstance(results[1], BadVersionError),
        results,
    )
    check("nothing of it applied", zk.exists("/k/api/tx2") is None)

    # ACLs and digest authentication.
    acl = make_digest_acl("alice", "secret", all=True)
    zk.create("/k/api/secret", b"s", acl=[acl])
    other = client(hosts)
    raises("unauthenticated read: NoAuthError", NoAuthError, other.get, "/k/api/secret")
    # Reading an ACL takes READ or ADMIN on the node, as in ZooKeeper since 3.5.
    raises("unauthenticated get_acls: NoAuthError", NoAuthError, other.get_acls, "/k/api/secret")
    other.add_auth("digest", "alice:secret")
    check("authenticated read", other.get("/k/api/secret")[0] == b"s")
    acls, _ = other.get_acls("/k/api/secret")
    check("digest ACL stored", acls == [acl], acls)
    zk.add_auth("digest", "alice:secret")
    zk.set_acls("/k/api/secret", OPEN_ACL_UNSAFE)
    check("set_acls", zk.get_acls("/k/api/secret")[0] == OPEN_ACL_UNSAFE)

    check("sync", zk.sync("/k/api") == "/k/api")
    other.set("/k/api/node", b"from-other")
    zk.sync("/k/api/node")
    check("read after another session's write and sync", zk.get("/k/api/node")[0] == b"from-other")

    check("ruok", zk.command(b"ruok") == "imok")
    version = zk.server_version()
    check("server_version", len(version) == 3 and version[0] == 3, version)

    # Closing the session removes its ephemerals, for every other session to see.
    close(zk)
    check("ephemeral gone with its session", other.exists("/k/api/eph") is None)
    other.create("/k/result/api", b"done", makepath=True)
    close(other)


def watches(hosts):
    zk = client(hosts)
    writer = client(hosts)
    zk.ensure_path("/k/w")

    # One-shot watches: each fires once, with its type and path.
    events = []
    fired = threading.Event()

    def record(event):
        events.append(event)
        fired.set()

    def fires(what, trigger):
        """Runs trigger, waits for the watch it sets off, and returns that watch's event."""
        before = len(events)
        fired.clear()
        trigger()
        wait_for(what, fired)
        return events[before]

    zk.create("/k/w/data", b"0")
    zk.get("/k/w/data", watch=record)
    e = fires("data watch", lambda: writer.set("/k/w/data", b"1"))
    check("data watch fires CHANGED", e.type == EventType.CHANGED and e.path == "/k/w/data", events)
    writer.set("/k/w/data", b"2")
    writer.sync("/k/w/data")
    zk.sync("/k/w/data")
    check("a one-shot watch fires once", len(events) == 1, events)

    zk.exists("/k/w/later", watch=record)
    e = fires("exists watch", lambda: writer.create("/k/w/later", b""))
    check("exists watch on a missing node fires CREATED", e.type == EventType.CREATED, events)
    zk.get_children("/k/w", watch=record)
    e = fires("child watch", lambda: writer.create("/k/w/kid", b""))
    check("child watch fires CHILD on the parent", e.type == EventType.CHILD and e.path == "/k/w", events)
    zk.get("/k/w/later", watch=record)
    e = fires("delete watch", lambda: writer.delete("/k/w/later"))
    check("data watch fires DELETED", e.type == EventType.DELETED, events)

    # The recipes built on them: DataWatch sees every value, ChildrenWatch every list.
    data = Calls("DataWatch")
    zk.DataWatch("/k/w/dw", lambda value, stat, event: data.add(value))
    data.wait_last("DataWatch of a missing node", None)
    writer.create("/k/w/dw", b"a")
    data.wait_last("DataWatch sees the create", b"a")
    writer.set("/k/w/dw", b"b")
    data.wait_last("DataWatch sees the change", b"b")
    writer.delete("/k/w/dw")
    data.wait_last("DataWatch sees the delete", None)
    ok("DataWatch")

    kids = Calls("ChildrenWatch")
    zk.ensure_path("/k/w/cw")
    zk.ChildrenWatch("/k/w/cw", lambda children: kids.add(sorted(children)))
    kids.wait_last("ChildrenWatch starts empty", [])
    writer.create("/k/w/cw/x", b"")
    kids.wait_last("ChildrenWatch sees a child", ["x"])
    writer.create("/k/w/cw/y", b"", ephemeral=True)
    kids.wait_last("ChildrenWatch sees another", ["x", "y"])
    close(writer)
    kids.wait_last("ChildrenWatch sees an ephemeral go with its session", ["x"])
    ok("ChildrenWatch")
    zk.create("/k/result/watches", b"done", makepath=True)
    close(zk)


def recipes(hosts):
    a = client(hosts)
    b = client(hosts)

    # Lock: exclusive; a holder's lost session frees it.
    lock_a = a.Lock("/k/lock", "a")
    lock_b = b.Lock("/k/lock", "b")
    check("lock acquired", lock_a.acquire(timeout=DEADLINE))
    raises("a held lock refuses another", LockTimeout, lock_b.acquire, timeout=0.5)
    check("contenders", lock_a.contenders() == ["a"], lock_a.contenders())
    lock_a.release()
    check("released lock is taken", lock_b.acquire(timeout=DEADLINE))
    got = threading.Event()

    def wait_lock():
        if lock_a.acquire(timeout=DEADLINE):
            got.set()

    waiter = threading.Thread(target=wait_lock, daemon=True)
    waiter.start()
    close(b)
    wait_for("lock freed by a closed session", got)
    ok("lock freed by a closed session")
    lock_a.release()

    # Counter: versioned read-modify-write from two sessions at once, nothing lost.
    b = client(hosts)
    errors = []

    def count(zk):
        try:
            counter = zk.Counter("/k/counter")
            for _ in range(50):
                counter += 1
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=count, args=(zk,)) for zk in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE * 3)
    check("counter threads ended", not any(t.is_alive() for t in threads) and not errors, errors)
    check("counter counted every increment", a.Counter("/k/counter").value == 100, a.Counter("/k/counter").value)

    # Election: the first contender leads; the next leads once it steps down.
    leading = threading.Event()
    step_down = threading.Event()
    led = []

    def lead(name):
        led.append(name)
        leading.set()
        step_down.wait(DEADLINE)

    election_a = a.Election("/k/election", "a")
    election_b = b.Election("/k/election", "b")
    ta = threading.Thread(target=election_a.run, args=(lead, "a"), daemon=True)
    ta.start()
    wait_for("first leader", leading)
    leading.clear()
    tb = threading.Thread(target=election_b.run, args=(lead, "b"), daemon=True)
    tb.start()
    deadline = time.monotonic() + DEADLINE
    while election_a.contenders() != ["a", "b"] and time.monotonic() < deadline:
        time.sleep(0.01)
    check("election contenders in order", election_a.contenders() == ["a", "b"], election_a.contenders())
    step_down.set()
    wait_for("second leader", leading)
    check("leaders in turn", led == ["a", "b"], led)

    # Semaphore with two leases.
    s1, s2, s3 = (zk.Semaphore("/k/sem", name, max_leases=2) for zk, name in ((a, "1"), (b, "2"), (a, "3")))
    check("two leases granted", s1.acquire(timeout=DEADLINE) and s2.acquire(timeout=DEADLINE))
    raises("a third lease is refused", LockTimeout, s3.acquire, timeout=0.5)
    s1.release()
    check("a freed lease is granted", s3.acquire(timeout=DEADLINE))
    s2.release()
    s3.release()

    # Queue: priority order, then FIFO.
    q = a.Queue("/k/queue")
    q.put(b"late", priority=100)
    q.put(b"first", priority=1)
    q.put(b"second", priority=1)
    got = [b.Queue("/k/queue").get() for _ in range(3)]
    check("queue order", got == [b"first", b"second", b"late"], got)

    a.create("/k/result/recipes", b"done", makepath=True)
    close(a, b)


def move(hosts):
    states = []
    reconnected = threading.Event()

    def on_state(state):
        states.append(state)
        if state == KazooState.CONNECTED and KazooState.SUSPENDED in states:
            reconnected.set()

    zk = client(hosts)
    zk.add_listener(on_state)
    zk.ensure_path("/k/move/kids")
    zk.create("/k/move/eph", b"mine", ephemeral=True)
    zk.create("/k/move/watched", b"0")

    # kazoo does not carry one-shot watches over a lost connection: it calls each with a NONE
    # event and forgets it. Its DataWatch and ChildrenWatch read again and watch again once
    # connected, wherever that is.
    dropped = threading.Event()
    events = []

    def one_shot(event):
        events.append(event)
        dropped.set()

    zk.get("/k/move/watched", watch=one_shot)
    data, kids = Calls("DataWatch"), Calls("ChildrenWatch")
    zk.DataWatch("/k/move/watched", lambda value, stat, event: data.add(value))
    zk.ChildrenWatch("/k/move/kids", lambda children: kids.add(sorted(children)))
    data.wait_any("move")
    kids.wait_any("move")

    session_id, password = zk.client_id
    print("ready %x" % session_id, flush=True)
    line = sys.stdin.readline()
    if line.strip() != "gone":
        raise Failed("move: the test said %r, wanted 'gone'" % line)
    wait_for("reconnected to another server", reconnected)
    check("session kept across servers", zk.client_id == (session_id, password), (zk.client_id, session_id))
    check("ephemeral kept", zk.get("/k/move/eph")[0] == b"mine")
    check("no session lost", KazooState.LOST not in states, states)
    wait_for("the one-shot watch told of the lost connection", dropped)
    check(
        "a one-shot watch is told of the lost connection, not of a lost session",
        events[0].type == EventType.NONE and events[0].state == "CONNECTING",
        events,
    )

    writer = client(hosts.split(",", 1)[1])
    writer.set("/k/move/watched", b"1")
    writer.create("/k/move/kids/after", b"")
    data.wait_last("DataWatch goes on through the new server", b"1")
    kids.wait_last("ChildrenWatch goes on through the new server", ["after"])
    ok("DataWatch and ChildrenWatch go on through the new server")
    writer.create("/k/result/move", b"%x" % session_id, makepath=True)
    close(writer, zk)


SCENARIOS = {"api": api, "watches": watches, "recipes": recipes, "move": move}


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SCENARIOS:
        sys.exit("usage: scenarios.py {%s} HOSTS" % "|".join(SCENARIOS))
    try:
        SCENARIOS[sys.argv[1]](sys.argv[2])
    except Failed as e:
        print("FAIL " + str(e), flush=True)
        sys.exit(1)
    except Exception:  # noqa: BLE001 - any other error fails the scenario, with its traceback
        print("FAIL unexpected error:\n" + traceback.format_exc(), flush=True)
        sys.exit(1)
    print("done", flush=True)


if __name__ == "__main__":
    main()
