# Traffic helper for the datapath tests, run inside a pod netns with
# `ip netns exec <pod> python3 -c <this file> <cmd> ...`. Prints one result line.
import os, socket, struct, sys, time

def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def ping(dst, count, timeout, src=None):
    """ICMP echo over a raw socket; prints the number of replies."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    if src:
        s.bind((src, 0))
    ident = os.getpid() & 0xFFFF
    got = 0
    for seq in range(count):
        payload = b"myelin-ping-%d" % seq
        hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
        pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + payload), ident, seq) + payload
        s.sendto(pkt, (dst, 0))
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            s.settimeout(left)
            try:
                data, addr = s.recvfrom(2048)
            except socket.timeout:
                break
            ihl = (data[0] & 0x0F) * 4
            t, _c, _k, i, q = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if t == 0 and i == ident and q == seq and addr[0] == dst:
                got += 1
                break
    print(got, flush=True)

def tcp_server(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(20)
    print("ready", flush=True)
    c, _ = s.accept()
    c.settimeout(20)
    n = 0
    while True:
        b = c.recv(65536)
        if not b:
            break
        n += len(b)
    c.sendall(b"%d\n" % n)
    c.close()
    print("received", n, flush=True)

def tcp_client(addr, port, size):
    s = socket.create_connection((addr, port), timeout=10)
    s.sendall(b"x" * size)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        b = s.recv(100)
        if not b:
            break
        reply += b
    print(reply.decode().strip(), flush=True)

def udp_server(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(20)
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(2048)
        if data == b"quit":
            break
        s.sendto(data, peer)

def udp_client(addr, port, count, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got = 0
    for i in range(count):
        msg = b"myelin-udp-%d" % i
        s.sendto(msg, (addr, port))
        s.settimeout(timeout)
        try:
            while True:
                data, _ = s.recvfrom(2048)
                if data == msg:
                    got += 1
                    break
        except socket.timeout:
            pass
    s.sendto(b"quit", (addr, port))
    print(got, flush=True)

def tcp_echo_server(addr, ports):
    """Echo every connection on every port, until killed."""
    import threading
    socks = []
    for p in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, p))
        s.listen(64)
        socks.append(s)
    def serve(c):
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        c.close()
    def accept(s):
        while True:
            c, _ = s.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    for s in socks:
        threading.Thread(target=accept, args=(s,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin or kills us

def udp_echo_server(addr, ports):
    import threading
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, p))
        socks.append(s)
    def serve(s):
        while True:
            data, peer = s.recvfrom(65536)
            s.sendto(data, peer)
    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()

def tcp_connect(addr, port, timeout):
    """One connection + one echoed message: ok / timeout / refused / error."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        s.sendall(b"hello")
        got = b""
        while len(got) < 5:
            b = s.recv(100)
            if not b:
                break
            got += b
        print("ok" if got == b"hello" else "short", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)

def udp_probe(addr, port, timeout, size=5):
    """One datagram echoed? ok / timeout / refused (connected socket: ICMP
    port unreachable is reported as ECONNREFUSED)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, port))
    s.settimeout(timeout)
    msg = (b"probe" * (size // 5 + 1))[:size]
    try:
        s.send(msg)
        data = s.recv(65536)
        print("ok" if data == msg else "short", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)

def tcp_session(addr, port, timeout):
    """Keep one connection; per stdin line "send", send a message and print
    ok / timeout for its echo; EOF ends."""
    s = socket.create_connection((addr, port), timeout=timeout)
    print("ready %d" % s.getsockname()[1], flush=True)
    n = 0
    pending = b""
    for line in sys.stdin:
        if line.strip() != "send":
            continue
        n += 1
        msg = b"<%d>" % n
        s.sendall(msg)
        s.settimeout(timeout)
        try:
            while msg not in pending:
                b = s.recv(100)
                if not b:
                    break
                pending += b
            print("ok" if msg in pending else "closed", flush=True)
        except socket.timeout:
            print("timeout", flush=True)
        except OSError as e:
            print("error", e.errno, flush=True)

def tcp_sink(addr, port):
    """Accept one connection; report the bytes received so far every 20 ms
    ("t <ms> <total>"), then "done <total>" at EOF."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    s.settimeout(20)
    print("ready", flush=True)
    c, _ = s.accept()
    c.settimeout(0.02)
    total = 0
    while True:
        try:
            b = c.recv(1 << 20)
            if not b:
                break
            total += len(b)
        except socket.timeout:
            pass
        except OSError as e:
            print("error", e.errno, flush=True)
            return
        print("t %d %d" % (int(time.monotonic() * 1000), total), flush=True)
    print("done %d" % total, flush=True)

def tcp_stream(addr, port, seconds):
    """Send as fast as possible for `seconds`, then close; print "sent <total>"."""
    s = socket.create_connection((addr, port), timeout=10)
    buf = b"x" * 65536
    total = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        total += s.send(buf)
    s.shutdown(socket.SHUT_WR)
    s.settimeout(10)
    while s.recv(100):
        pass
    print("sent %d" % total, flush=True)

def tcp_connect_peer(addr, port, timeout):
    """Like tcp-connect, and print what getpeername() says: "ok <ip>:<port>"."""
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((addr, port))
        peer = s.getpeername()
        s.sendall(b"hello")
        got = b""
        while len(got) < 5:
            b = s.recv(100)
            if not b:
                break
            got += b
        print(("ok" if got == b"hello" else "short") + " %s:%d" % peer, flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)

def udp_hold(addr, port, mode, timeout):
    """One datagram to addr:port, echoed, on a socket that is "connected" or
    "unconnected" (sendto); print "ok <peer>" as recvfrom() reports it, then
    keep the socket until a line on stdin, close it and print "closed"."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if mode == "connected":
            s.connect((addr, port))
            s.send(b"hold")
        else:
            s.sendto(b"hold", (addr, port))
        _, peer = s.recvfrom(100)
        print("ok %s:%d" % peer, flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    sys.stdin.readline()
    s.close()
    print("closed", flush=True)

def bind(proto, addr, port):
    """bind() with IP_FREEBIND (the address need not be local): ok / error <errno>."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 15, 1)  # IP_FREEBIND
    try:
        s.bind((addr, port))
        print("ok", flush=True)
    except OSError as e:
        print("error", e.errno, flush=True)

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "ping":
    ping(args[0], int(args[1]), float(args[2]), args[3] if len(args) > 3 else None)
elif cmd == "tcp-server":
    tcp_server(args[0], int(args[1]))
elif cmd == "tcp-client":
    tcp_client(args[0], int(args[1]), int(args[2]))
elif cmd == "udp-server":
    udp_server(args[0], int(args[1]))
elif cmd == "udp-client":
    udp_client(args[0], int(args[1]), int(args[2]), float(args[3]))
elif cmd == "tcp-echo-server":
    tcp_echo_server(args[0], [int(p) for p in args[1:]])
elif cmd == "udp-echo-server":
    udp_echo_server(args[0], [int(p) for p in args[1:]])
elif cmd == "tcp-connect":
    tcp_connect(args[0], int(args[1]), float(args[2]))
elif cmd == "udp-probe":
    udp_probe(args[0], int(args[1]), float(args[2]), int(args[3]) if len(args) > 3 else 5)
elif cmd == "tcp-sink":
    tcp_sink(args[0], int(args[1]))
elif cmd == "tcp-stream":
    tcp_stream(args[0], int(args[1]), float(args[2]))
elif cmd == "tcp-connect-peer":
    tcp_connect_peer(args[0], int(args[1]), float(args[2]))
elif cmd == "tcp-session":
    tcp_session(args[0], int(args[1]), float(args[2]))
elif cmd == "udp-hold":
    udp_hold(args[0], int(args[1]), args[2], float(args[3]))
elif cmd == "bind":
    bind(args[0], args[1], int(args[2]))
else:
    sys.exit("unknown command " + cmd)
