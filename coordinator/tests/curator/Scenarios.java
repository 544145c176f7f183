// Apache Curator 5.4 (Debian's libcurator-recipes-java, over Apache ZooKeeper 3.8's Java client)
// against the bundled coordinator: the framework's API and the recipes Java services build on,
// each result checked here.
//
// Run by `coordinator/tests/curator.rs` with Java's source launcher:
//
//     java -cp CURATOR_JARS Scenarios.java SCENARIO HOSTS
//
// SCENARIO is `api`, `recipes` or `move`. Every check prints `ok <name>`; the first failed check
// prints `FAIL <name>: <why>` and the program exits 1. Every wait has a deadline. `move` talks to
// the test on its standard streams: it prints `ready <session id>` once connected and waits for a
// line telling it that its server is gone, then checks that the session moved with its ephemeral
// node, its lock and its watches (the Java client sets them again with SetWatches2).

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.api.transaction.CuratorTransactionResult;
import org.apache.curator.framework.recipes.atomic.AtomicValue;
import org.apache.curator.framework.recipes.atomic.DistributedAtomicLong;
import org.apache.curator.framework.recipes.cache.CuratorCache;
import org.apache.curator.framework.recipes.cache.CuratorCacheListener;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.locks.InterProcessMutex;
import org.apache.curator.framework.recipes.locks.InterProcessSemaphoreV2;
import org.apache.curator.framework.recipes.locks.Lease;
import org.apache.curator.framework.recipes.shared.SharedCount;
import org.apache.curator.framework.state.ConnectionState;
import org.apache.curator.retry.ExponentialBackoffRetry;
import org.apache.curator.retry.RetryNTimes;
import org.apache.zookeeper.AddWatchMode;
import org.apache.zookeeper.CreateMode;
import org.apache.zookeeper.KeeperException;
import org.apache.zookeeper.WatchedEvent;
import org.apache.zookeeper.Watcher;
import org.apache.zookeeper.ZooDefs;
import org.apache.zookeeper.ZooKeeper;
import org.apache.zookeeper.data.ACL;
import org.apache.zookeeper.data.Id;
import org.apache.zookeeper.data.Stat;
import org.apache.zookeeper.server.auth.DigestAuthenticationProvider;

public class Scenarios {
    /** How long any one expected event may take, in seconds. */
    static final int DEADLINE = 20;

    static final class Failed extends Exception {
        Failed(String what) {
            super(what);
        }
    }

    interface Action {
        void run() throws Exception;
    }

    static void ok(String name) {
        System.out.println("ok " + name);
        System.out.flush();
    }

    static void check(String name, boolean cond, Object why) throws Failed {
        if (!cond) {
            throw new Failed(name + ": " + why);
        }
        ok(name);
    }

    static void raises(String name, Class<? extends Exception> expected, Action action) throws Failed {
        try {
            action.run();
        } catch (Exception e) {
            if (expected.isInstance(e)) {
                ok(name);
                return;
            }
            throw new Failed(name + ": expected " + expected.getSimpleName() + ", got " + e);
        }
        throw new Failed(name + ": expected " + expected.getSimpleName() + ", got no error");
    }

    static void waitFor(String name, BooleanSupplier cond) throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(DEADLINE);
        while (!cond.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new Failed(name + ": not within " + DEADLINE + " s");
            }
            Thread.sleep(5);
        }
    }

    /** A new watcher that queues node events (removing a watch also tells its watcher, locally). */
    static Watcher nodeEventsInto(BlockingQueue<WatchedEvent> events) {
        return e -> {
            if (e.getPath() != null && e.getType().name().startsWith("Node")) {
                events.add(e);
            }
        };
    }

    static byte[] b(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    static String s(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    static CuratorFramework client(String hosts, String digest) throws Exception {
        CuratorFrameworkFactory.Builder builder = CuratorFrameworkFactory.builder()
                .connectString(hosts)
                .sessionTimeoutMs(10_000)
                .connectionTimeoutMs(10_000)
                .retryPolicy(new ExponentialBackoffRetry(50, 10, 1_000));
        if (digest != null) {
            builder.authorization("digest", b(digest));
        }
        CuratorFramework c = builder.build();
        c.start();
        if (!c.blockUntilConnected(DEADLINE, TimeUnit.SECONDS)) {
            throw new Failed("connect to " + hosts + ": not within " + DEADLINE + " s");
        }
        return c;
    }

    static void api(String hosts) throws Exception {
        try (CuratorFramework c = client(hosts, null); CuratorFramework other = client(hosts, null)) {
            String made = c.create().creatingParentsIfNeeded().forPath("/c/api/deep/node", b("one"));
            check("create with parents", made.equals("/c/api/deep/node"), made);
            Stat stat = new Stat();
            byte[] data = c.getData().storingStatIn(stat).forPath("/c/api/deep/node");
            check("getData with its stat", s(data).equals("one") && stat.getVersion() == 0 && stat.getDataLength() == 3, stat);
            raises("create twice: NodeExists", KeeperException.NodeExistsException.class,
                    () -> c.create().forPath("/c/api/deep/node"));
            raises("create without a parent: NoNode", KeeperException.NoNodeException.class,
                    () -> c.create().forPath("/c/api/none/x"));
            Stat set = c.setData().withVersion(0).forPath("/c/api/deep/node", b("two"));
            check("setData with its version", set.getVersion() == 1, set);
            raises("setData with a stale version: BadVersion", KeeperException.BadVersionException.class,
                    () -> c.setData().withVersion(0).forPath("/c/api/deep/node", b("x")));
            check("checkExists of a missing node is null", c.checkExists().forPath("/c/api/missing") == null, "");

            int base = c.checkExists().forPath("/c/api").getCversion();
            List<String> seqs = new ArrayList<>();
            for (int i = 0; i < 3; i++) {
                seqs.add(c.create().withMode(CreateMode.PERSISTENT_SEQUENTIAL).forPath("/c/api/seq-"));
            }
            List<String> want = new ArrayList<>();
            for (int i = 0; i < 3; i++) {
                want.add(String.format("/c/api/seq-%010d", base + i));
            }
            check("sequential names count from the parent's cversion", seqs.equals(want), seqs + " " + want);
            String eph = c.create().withMode(CreateMode.EPHEMERAL).forPath("/c/api/eph");
            long session = c.getZookeeperClient().getZooKeeper().getSessionId();
            check("ephemeral owner is the session", c.checkExists().forPath(eph).getEphemeralOwner() == session, session);

            List<String> kids = c.getChildren().forPath("/c/api");
            Collections.sort(kids);
            check("getChildren", kids.equals(List.of("deep", "eph", seqs.get(0).substring(7), seqs.get(1).substring(7),
                    seqs.get(2).substring(7))), kids);
            raises("delete of a non-empty node: NotEmpty", KeeperException.NotEmptyException.class,
                    () -> c.delete().forPath("/c/api/deep"));
            c.delete().deletingChildrenIfNeeded().forPath("/c/api/deep");
            check("delete with its children", c.checkExists().forPath("/c/api/deep") == null, "");

            c.create().forPath("/c/api/node", b("a"));
            List<CuratorTransactionResult> results = c.transaction().forOperations(
                    c.transactionOp().create().forPath("/c/api/tx1", b("t")),
                    c.transactionOp().check().withVersion(0).forPath("/c/api/node"),
                    c.transactionOp().setData().withVersion(0).forPath("/c/api/node", b("b")),
                    c.transactionOp().delete().forPath(seqs.get(0)));
            check("transaction committed", results.size() == 4 && results.get(0).getResultPath().equals("/c/api/tx1"),
                    results);
            check("transaction applied", s(c.getData().forPath("/c/api/node")).equals("b")
                    && c.checkExists().forPath(seqs.get(0)) == null, "");
            raises("a failing transaction: BadVersion", KeeperException.BadVersionException.class,
                    () -> c.transaction().forOperations(
                            c.transactionOp().create().forPath("/c/api/tx2"),
                            c.transactionOp().check().withVersion(99).forPath("/c/api/node")));
            check("nothing of it applied", c.checkExists().forPath("/c/api/tx2") == null, "");

            ACL alice = new ACL(ZooDefs.Perms.ALL, new Id("digest", DigestAuthenticationProvider.generateDigest("alice:secret")));
            c.create().withACL(List.of(alice)).forPath("/c/api/secret", b("s"));
            raises("unauthenticated read: NoAuth", KeeperException.NoAuthException.class,
                    () -> other.getData().forPath("/c/api/secret"));
            try (CuratorFramework authed = client(hosts, "alice:secret")) {
                check("authenticated read", s(authed.getData().forPath("/c/api/secret")).equals("s"), "");
                check("the ACL as stored", authed.getACL().forPath("/c/api/secret").equals(List.of(alice)),
                        authed.getACL().forPath("/c/api/secret"));
            }

            other.setData().forPath("/c/api/node", b("from-other"));
            CountDownLatch synced = new CountDownLatch(1);
            c.sync().inBackground((client, event) -> synced.countDown()).forPath("/c/api/node");
            check("sync", synced.await(DEADLINE, TimeUnit.SECONDS), "no callback");
            check("read after another session's write and sync", s(c.getData().forPath("/c/api/node")).equals("from-other"), "");

            // The raw client's watches: a one-shot watch fires once, a persistent one each time.
            ZooKeeper zk = c.getZookeeperClient().getZooKeeper();
            // Two watcher objects: the client calls each watcher once per event, whatever
            // number of its watches the event fires.
            BlockingQueue<WatchedEvent> events = new LinkedBlockingQueue<>();
            zk.getData("/c/api/node", nodeEventsInto(events), null);
            zk.addWatch("/c/api", nodeEventsInto(events), AddWatchMode.PERSISTENT_RECURSIVE);
            other.setData().forPath("/c/api/node", b("w1"));
            List<String> seen = new ArrayList<>();
            for (int i = 0; i < 2; i++) {
                WatchedEvent e = events.poll(DEADLINE, TimeUnit.SECONDS);
                check("watch event " + i, e != null, "none");
                seen.add(e.getType() + " " + e.getPath());
            }
            check("a change fires the one-shot and the recursive watch",
                    seen.equals(List.of("NodeDataChanged /c/api/node", "NodeDataChanged /c/api/node")), seen);
            other.create().forPath("/c/api/node/kid");
            WatchedEvent e = events.poll(DEADLINE, TimeUnit.SECONDS);
            check("the recursive watch sees a grandchild created", e != null && e.getType() == Watcher.Event.EventType.NodeCreated
                    && e.getPath().equals("/c/api/node/kid"), e);
            zk.removeAllWatches("/c/api", Watcher.WatcherType.Any, false);
            other.setData().forPath("/c/api/node", b("w2"));
            // A read after that write, answered through the client's event thread: every
            // notification the server sent before its reply has been delivered by then.
            CountDownLatch fence = new CountDownLatch(1);
            zk.getData("/c/api/node", false, (rc, path, ctx, bytes, st) -> fence.countDown(), null);
            check("a read after the write", fence.await(DEADLINE, TimeUnit.SECONDS), "no callback");
            check("removed watches fire no more", events.isEmpty(), events);

            other.create().creatingParentsIfNeeded().forPath("/c/result/api", b("done"));
        }
    }

    static void recipes(String hosts) throws Exception {
        try (CuratorFramework a = client(hosts, null)) {
            CuratorFramework b = client(hosts, null);

            // InterProcessMutex: exclusive, re-entrant, freed by a closed session.
            InterProcessMutex lockA = new InterProcessMutex(a, "/c/lock");
            InterProcessMutex lockB = new InterProcessMutex(b, "/c/lock");
            check("lock acquired", lockA.acquire(DEADLINE, TimeUnit.SECONDS), "");
            check("a held lock is refused to another", !lockB.acquire(300, TimeUnit.MILLISECONDS), "");
            check("re-entrant", lockA.acquire(DEADLINE, TimeUnit.SECONDS), "");
            lockA.release();
            lockA.release();
            check("a released lock is taken", lockB.acquire(DEADLINE, TimeUnit.SECONDS), "");
            b.close();
            check("a lock freed by its session's close", lockA.acquire(DEADLINE, TimeUnit.SECONDS), "");
            lockA.release();
            b = client(hosts, null);

            // LeaderLatch: one leader; the next takes over when it leaves.
            LeaderLatch latchA = new LeaderLatch(a, "/c/latch", "a");
            LeaderLatch latchB = new LeaderLatch(b, "/c/latch", "b");
            latchA.start();
            check("first latch leads", latchA.await(DEADLINE, TimeUnit.SECONDS), "");
            latchB.start();
            LeaderLatch observed = latchB;
            waitFor("second latch joins", () -> {
                try {
                    return observed.getParticipants().size() == 2;
                } catch (Exception ex) {
                    return false;
                }
            });
            check("one leader at a time", latchA.hasLeadership() && !latchB.hasLeadership()
                    && latchB.getLeader().getId().equals("a"), latchB.getLeader());
            latchA.close();
            check("the next latch leads", latchB.await(DEADLINE, TimeUnit.SECONDS), "");
            latchB.close();

            // DistributedAtomicLong: optimistic increments from two sessions at once, none lost.
            List<Throwable> errors = new CopyOnWriteArrayList<>();
            List<Thread> threads = new ArrayList<>();
            for (CuratorFramework c : List.of(a, b)) {
                Thread t = new Thread(() -> {
                    try {
                        DistributedAtomicLong counter = new DistributedAtomicLong(c, "/c/counter", new RetryNTimes(1000, 1));
                        for (int i = 0; i < 50; i++) {
                            AtomicValue<Long> v = counter.increment();
                            if (!v.succeeded()) {
                                throw new IllegalStateException("increment gave up");
                            }
                        }
                    } catch (Throwable ex) {
                        errors.add(ex);
                    }
                });
                t.start();
                threads.add(t);
            }
            for (Thread t : threads) {
                t.join(TimeUnit.SECONDS.toMillis(DEADLINE * 3));
            }
            check("counter threads ended", errors.isEmpty() && threads.stream().noneMatch(Thread::isAlive), errors);
            long value = new DistributedAtomicLong(a, "/c/counter", new RetryNTimes(3, 1)).get().postValue();
            check("every increment counted", value == 100, value);

            // InterProcessSemaphoreV2 with two leases.
            InterProcessSemaphoreV2 semA = new InterProcessSemaphoreV2(a, "/c/sem", 2);
            InterProcessSemaphoreV2 semB = new InterProcessSemaphoreV2(b, "/c/sem", 2);
            Lease l1 = semA.acquire(DEADLINE, TimeUnit.SECONDS);
            Lease l2 = semB.acquire(DEADLINE, TimeUnit.SECONDS);
            check("two leases granted", l1 != null && l2 != null, "");
            check("a third is refused", semA.acquire(300, TimeUnit.MILLISECONDS) == null, "");
            semA.returnLease(l1);
            Lease l3 = semB.acquire(DEADLINE, TimeUnit.SECONDS);
            check("a returned lease is granted", l3 != null, "");
            semB.returnLease(l2);
            semB.returnLease(l3);

            // SharedCount: versioned sets, seen by another session's listener.
            try (SharedCount countA = new SharedCount(a, "/c/shared", 0); SharedCount countB = new SharedCount(b, "/c/shared", 0)) {
                countA.start();
                countB.start();
                check("a set with the current version", countA.trySetCount(countA.getVersionedValue(), 7), "");
                waitFor("the other session sees 7", () -> countB.getCount() == 7);
                ok("the other session sees 7");
            }

            // CuratorCache: a persistent recursive watch (addWatch) and the events it brings.
            List<String> cacheEvents = new CopyOnWriteArrayList<>();
            CountDownLatch initialized = new CountDownLatch(1);
            try (CuratorCache cache = CuratorCache.build(a, "/c/cache")) {
                cache.listenable().addListener(CuratorCacheListener.builder()
                        .forCreates(n -> cacheEvents.add("create " + n.getPath() + " " + s(n.getData())))
                        .forChanges((o, n) -> cacheEvents.add("change " + n.getPath() + " " + s(n.getData())))
                        .forDeletes(o -> cacheEvents.add("delete " + o.getPath()))
                        .forInitialized(initialized::countDown)
                        .build());
                cache.start();
                check("cache initialized", initialized.await(DEADLINE, TimeUnit.SECONDS), "");
                // One write at a time, each awaited in the cache: the cache reads a node after its
                // event, so writes close together may be seen merged, in either order.
                CuratorFramework w = b;
                List<Action> writes = List.of(
                        () -> w.create().forPath("/c/cache", b("root")),
                        () -> w.create().forPath("/c/cache/x", b("1")),
                        () -> w.create().forPath("/c/cache/x/y", b("2")),
                        () -> w.setData().forPath("/c/cache/x", b("3")),
                        () -> w.delete().forPath("/c/cache/x/y"));
                for (int i = 0; i < writes.size(); i++) {
                    writes.get(i).run();
                    int seen = i + 1;
                    waitFor("the cache's event for write " + seen + " " + cacheEvents, () -> cacheEvents.size() >= seen);
                }
                List<String> want = List.of("create /c/cache root", "create /c/cache/x 1", "create /c/cache/x/y 2",
                        "change /c/cache/x 3", "delete /c/cache/x/y");
                check("the cache saw every change", cacheEvents.equals(want), cacheEvents);
                check("the cache holds the tree", cache.get("/c/cache/x").map(n -> s(n.getData())).orElse("").equals("3")
                        && cache.get("/c/cache/x/y").isEmpty(), cache.stream().count());
            }

            a.create().creatingParentsIfNeeded().forPath("/c/result/recipes", b("done"));
            b.close();
        }
    }

    static void move(String hosts) throws Exception {
        List<ConnectionState> states = new CopyOnWriteArrayList<>();
        try (CuratorFramework c = client(hosts, null)) {
            c.getConnectionStateListenable().addListener((client, state) -> states.add(state));
            c.create().creatingParentsIfNeeded().withMode(CreateMode.EPHEMERAL).forPath("/c/move/eph", b("mine"));
            c.create().forPath("/c/move/one", b("0"));
            c.create().forPath("/c/move/tree");
            InterProcessMutex lock = new InterProcessMutex(c, "/c/move/lock");
            check("lock acquired", lock.acquire(DEADLINE, TimeUnit.SECONDS), "");

            // Watches the Java client sets again on the new server (SetWatches2): a one-shot
            // data watch and a persistent recursive one, on the raw handle, so that nothing
            // but the server's own re-registration can bring their events.
            ZooKeeper zk = c.getZookeeperClient().getZooKeeper();
            BlockingQueue<WatchedEvent> oneShot = new LinkedBlockingQueue<>();
            BlockingQueue<WatchedEvent> recursive = new LinkedBlockingQueue<>();
            zk.getData("/c/move/one", e -> {
                if (e.getType() != Watcher.Event.EventType.None) {
                    oneShot.add(e);
                }
            }, null);
            zk.addWatch("/c/move/tree", e -> {
                if (e.getType() != Watcher.Event.EventType.None) {
                    recursive.add(e);
                }
            }, AddWatchMode.PERSISTENT_RECURSIVE);

            long session = zk.getSessionId();
            System.out.println("ready " + Long.toHexString(session));
            System.out.flush();
            String line = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8)).readLine();
            if (line == null || !line.trim().equals("gone")) {
                throw new Failed("move: the test said " + line + ", wanted 'gone'");
            }
            waitFor("reconnected to another server", () -> states.contains(ConnectionState.RECONNECTED));
            check("session kept across servers", c.getZookeeperClient().getZooKeeper().getSessionId() == session,
                    Long.toHexString(c.getZookeeperClient().getZooKeeper().getSessionId()));
            check("no session lost", !states.contains(ConnectionState.LOST), states);
            check("ephemeral kept", s(c.getData().forPath("/c/move/eph")).equals("mine"), "");

            try (CuratorFramework other = client(hosts, null)) {
                InterProcessMutex theirs = new InterProcessMutex(other, "/c/move/lock");
                check("the lock is still held", !theirs.acquire(300, TimeUnit.MILLISECONDS), "");
                other.setData().forPath("/c/move/one", b("1"));
                other.create().forPath("/c/move/tree/a", b(""));
                other.create().forPath("/c/move/tree/a/b", b(""));
                WatchedEvent e = oneShot.poll(DEADLINE, TimeUnit.SECONDS);
                check("the one-shot watch fires through the new server", e != null
                        && e.getType() == Watcher.Event.EventType.NodeDataChanged && e.getPath().equals("/c/move/one"), e);
                List<String> seen = new ArrayList<>();
                for (int i = 0; i < 2; i++) {
                    WatchedEvent r = recursive.poll(DEADLINE, TimeUnit.SECONDS);
                    seen.add(r == null ? "none" : r.getType() + " " + r.getPath());
                }
                check("the recursive watch fires through the new server",
                        seen.equals(List.of("NodeCreated /c/move/tree/a", "NodeCreated /c/move/tree/a/b")), seen);
                lock.release();
                check("the lock passes on once released", theirs.acquire(DEADLINE, TimeUnit.SECONDS), "");
                theirs.release();
                other.create().creatingParentsIfNeeded().forPath("/c/result/move", b(Long.toHexString(session)));
            }
        }
    }

    public static void main(String[] args) {
        if (args.length != 2) {
            System.err.println("usage: Scenarios.java {api|recipes|move} HOSTS");
            System.exit(2);
        }
        try {
            switch (args[0]) {
                case "api" -> api(args[1]);
                case "recipes" -> recipes(args[1]);
                case "move" -> move(args[1]);
                default -> throw new Failed("unknown scenario " + args[0]);
            }
        } catch (Failed e) {
            System.out.println("FAIL " + e.getMessage());
            System.exit(1);
        } catch (Throwable e) {
            System.out.println("FAIL unexpected error: " + e);
            e.printStackTrace(System.out);
            System.exit(1);
        }
        System.out.println("done");
        System.out.flush();
        // Curator's and ZooKeeper's threads must not keep a finished run alive.
        System.exit(0);
    }
}
