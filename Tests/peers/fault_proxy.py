#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that injects one fault into the client-to-server stream, then passes traffic through.

    python3 fault_proxy.py UPSTREAM_PORT --cut-after N | --reset-after N | --stall-after N --stall S

After N bytes from clients (counted across connections): --cut-after closes both sides (FIN), --reset-after
aborts with a TCP reset, --stall-after holds the stream for S seconds. Only the first fault fires. With none of
them it only passes traffic. --count FILE keeps the number of client bytes passed in FILE. Prints "PORT <n>" when
listening.
"""
import argparse
import asyncio
import socket
import struct


async def pipe(reader, writer, on_data=None):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if on_data:
                data = await on_data(data, writer)
                if data is None:
                    return
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("upstream", type=int)
    parser.add_argument("--cut-after", type=int)
    parser.add_argument("--reset-after", type=int)
    parser.add_argument("--stall-after", type=int)
    parser.add_argument("--stall", type=float, default=5)
    parser.add_argument("--count")
    args = parser.parse_args()
    state = {"seen": 0, "fired": False}

    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", args.upstream)

        async def inject(data, writer):
            if args.count:
                with open(args.count, "w") as counter:
                    counter.write(str(state["seen"] + len(data)))
            limit = args.cut_after or args.reset_after or args.stall_after
            if state["fired"] or limit is None or state["seen"] + len(data) < limit:
                state["seen"] += len(data)
                return data
            state["fired"] = True
            head = data[: limit - state["seen"]]
            state["seen"] += len(data)
            writer.write(head)
            await writer.drain()
            if args.stall_after is not None:
                await asyncio.sleep(args.stall)
                return data[len(head):]
            for w in (client_writer, server_writer):
                sock = w.get_extra_info("socket")
                if args.reset_after is not None and sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w.close()
            return None

        await asyncio.gather(pipe(client_reader, server_writer, inject), pipe(server_reader, client_writer))

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
