"""Runs inside gdb (`gdb -p PID -batch -x gdb_kill_at.py`): kill the process at one syscall of one table's insert.

The embedded engine's library is stripped, so the stop is a syscall, not a symbol. KILL_DIR is the table's directory
(store/xxx/<uuid>); KILL_POINT says where, relative to the insert's part of that table:
  part_written  -- the first file of the part is being created: before the deduplication record
  before_rename -- the part's rename is called: after the deduplication record, before the part is in place
  after_rename  -- the part's rename has returned: the part is in place
KILL_SKIP (default 0) lets that many of the table's inserts pass first (a batch that goes in several inserts).
Prints ARMED once the catchpoint is set, then AT <path> and KILLED when it kills.
"""

import os

import gdb

DIRECTORY = os.environ["KILL_DIR"].rstrip("/") + "/"
POINT = os.environ["KILL_POINT"]
SKIP = int(os.environ.get("KILL_SKIP", "0"))
ENOSYS = -38  # x86-64: rax holds -ENOSYS at a syscall's entry, its result at the return
# x86-64 syscall numbers, and the register holding the path of interest for each.
PATH_REGISTER = {257: "$rsi", 82: "$rdi", 264: "$rsi", 316: "$rsi"}  # openat, rename, renameat, renameat2


def string_at(address: int) -> str:
    data = bytes(gdb.selected_inferior().read_memory(address, 4096))
    return data.split(b"\0", 1)[0].decode(errors="replace")


def ours(path: str) -> bool:
    return path.startswith(DIRECTORY) and path[len(DIRECTORY):].startswith("tmp_insert_")


gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("catch syscall openat" if POINT == "part_written" else "catch syscall rename renameat renameat2")
print("ARMED", flush=True)
waiting_thread = None  # after_rename: the thread whose rename of our part must return first
seen = set()  # the table's parts met so far, by temporary name
while True:
    gdb.execute("continue", to_string=True)
    number = int(gdb.parse_and_eval("$orig_rax"))
    entry = int(gdb.parse_and_eval("$rax")) == ENOSYS
    thread = gdb.selected_thread().num
    if waiting_thread is not None:
        if thread == waiting_thread and not entry:
            break
        continue
    if not entry or number not in PATH_REGISTER:
        continue
    path = string_at(int(gdb.parse_and_eval(PATH_REGISTER[number])))
    if ours(path):
        part = path[len(DIRECTORY):].split("/")[0]
        seen.add(part)
        if len(seen) <= SKIP:
            continue
        print("AT", path, flush=True)
        if POINT != "after_rename":
            break
        waiting_thread = thread
gdb.execute("kill")
print("KILLED", flush=True)
