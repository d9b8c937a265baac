"""
The queues of a fleet, in Redis (C{--backplane}): messages that wait for a
named client are kept where every node finds them, so a client that comes
back through any node gets what waited for it, in order, at most once.

Every change is one Lua script, so it is atomic across the fleet: a send
checks the bounds and adds in one step (the bounds per name hold
fleet-wide), and a hand-over takes a client's whole queue in one step
before a byte of it is written. Under C{--backplane-prefix} (C{P}):

  - C{P queue:ID}: a list of that id's messages, oldest first, each
    C{EXPIRES QUEUED\\nMESSAGE} (milliseconds of Redis' own clock);
  - C{P queues}: a hash of the ids with messages waiting, to their bytes;
  - C{P queuenext}: a hash of those ids to their first expiry, so that
    expired messages are looked for only when one has expired;
  - C{P queuestats}: a hash of the fleet's totals, C{messages} and C{bytes}.

What is kept follows Redis' own persistence (RDB, AOF).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from tcpcomm.fleet.backplane import _NOW, Backplane

#: Drop the expired messages of id C{id}, if one may have expired: how many.
_SWEEP = """
local function sweep(id)
  local nxt = tonumber(redis.call('HGET', p .. 'queuenext', id) or '-1')
  if nxt < 0 or nxt > now then return 0 end
  local key = p .. 'queue:' .. id
  local all = redis.call('LRANGE', key, 0, -1)
  redis.call('DEL', key)
  local dropped, droppedBytes, held, kept, first = 0, 0, 0, 0, -1
  for _, e in ipairs(all) do
    local expires = tonumber(string.match(e, '^(%d+)'))
    local size = #e - string.find(e, '\\n', 1, true)
    if expires <= now then
      dropped, droppedBytes = dropped + 1, droppedBytes + size
    else
      redis.call('RPUSH', key, e)
      held, kept = held + size, kept + 1
      if first < 0 or expires < first then first = expires end
    end
  end
  if kept > 0 then
    redis.call('HSET', p .. 'queues', id, held)
    redis.call('HSET', p .. 'queuenext', id, first)
  else
    redis.call('HDEL', p .. 'queues', id)
    redis.call('HDEL', p .. 'queuenext', id)
  end
  redis.call('HINCRBY', p .. 'queuestats', 'messages', -dropped)
  redis.call('HINCRBY', p .. 'queuestats', 'bytes', -droppedBytes)
  return dropped
end
local function stat(name)
  return tonumber(redis.call('HGET', p .. 'queuestats', name) or '0')
end
"""

#: Queue ARGV[3] for id ARGV[2] for ARGV[4] ms within the bounds ARGV[5..7]
#: (messages and bytes per id, bytes in all), unless a live node holds the
#: id: {'elsewhere', node}, {'full', bound, held, expired, messages, bytes}
#: or {'queued', position, expired, messages, bytes}.
PUT = (
    "local p, id, msg = ARGV[1], ARGV[2], ARGV[3]"
    + "\nlocal ttl, maxM, maxB, maxT = tonumber(ARGV[4]), tonumber(ARGV[5]), "
    + "tonumber(ARGV[6]), tonumber(ARGV[7])"
    + _NOW
    + _SWEEP
    + """
for _, node in ipairs(redis.call('ZRANGE', p .. 'nodes', 0, -1)) do
  if redis.call('HEXISTS', p .. 'node:' .. node, id) == 1 then
    return {'elsewhere', node}
  end
end
local expired = sweep(id)
local size = #msg
if stat('bytes') + size > maxT then
  for _, other in ipairs(redis.call('HKEYS', p .. 'queues')) do
    expired = expired + sweep(other)
  end
end
local key = p .. 'queue:' .. id
local count = redis.call('LLEN', key)
local held = tonumber(redis.call('HGET', p .. 'queues', id) or '0')
local messages, total = stat('messages'), stat('bytes')
if count + 1 > maxM then
  return {'full', '--queue-max-messages', count, expired, messages, total}
elseif held + size > maxB then
  return {'full', '--queue-max-bytes', held, expired, messages, total}
elseif total + size > maxT then
  return {'full', '--queue-total-bytes', total, expired, messages, total}
end
local expires = now + ttl
redis.call('RPUSH', key, string.format('%d %d\\n', expires, now) .. msg)
redis.call('HSET', p .. 'queues', id, held + size)
local nxt = redis.call('HGET', p .. 'queuenext', id)
if not nxt or tonumber(nxt) > expires then
  redis.call('HSET', p .. 'queuenext', id, expires)
end
redis.call('HINCRBY', p .. 'queuestats', 'messages', 1)
redis.call('HINCRBY', p .. 'queuestats', 'bytes', size)
return {'queued', count + 1, expired, messages + 1, total + size}
"""
)

#: Take id ARGV[2]'s whole queue: {now, entry, entry...}, oldest first.
TAKE = (
    "local p, id = ARGV[1], ARGV[2]"
    + _NOW
    + """
local key = p .. 'queue:' .. id
local out = {now}
for _, e in ipairs(redis.call('LRANGE', key, 0, -1)) do out[#out + 1] = e end
if #out > 1 then
  redis.call('DEL', key)
  local held = tonumber(redis.call('HGET', p .. 'queues', id) or '0')
  redis.call('HDEL', p .. 'queues', id)
  redis.call('HDEL', p .. 'queuenext', id)
  redis.call('HINCRBY', p .. 'queuestats', 'messages', 1 - #out)
  redis.call('HINCRBY', p .. 'queuestats', 'bytes', -held)
end
return out
"""
)

#: Put entries ARGV[3..] back at the head of id ARGV[2]'s queue (a
#: hand-over to a connection that went before a byte was written).
RESTORE = (
    "local p, id = ARGV[1], ARGV[2]"
    + """
local key = p .. 'queue:' .. id
local size, first = 0, -1
for i = #ARGV, 3, -1 do
  local e = ARGV[i]
  redis.call('LPUSH', key, e)
  size = size + #e - string.find(e, '\\n', 1, true)
  local expires = tonumber(string.match(e, '^(%d+)'))
  if first < 0 or expires < first then first = expires end
end
redis.call('HINCRBY', p .. 'queues', id, size)
local nxt = redis.call('HGET', p .. 'queuenext', id)
if not nxt or tonumber(nxt) > first then
  redis.call('HSET', p .. 'queuenext', id, first)
end
redis.call('HINCRBY', p .. 'queuestats', 'messages', #ARGV - 2)
redis.call('HINCRBY', p .. 'queuestats', 'bytes', size)
return #ARGV - 2
"""
)

#: Every id with messages waiting (expired ones dropped first): {now, id,
#: messages, bytes, oldest queued, ...}.
SUMMARY = (
    "local p = ARGV[1]"
    + _NOW
    + _SWEEP
    + """
local out = {now}
for _, id in ipairs(redis.call('HKEYS', p .. 'queues')) do sweep(id) end
for _, id in ipairs(redis.call('HKEYS', p .. 'queues')) do
  local key = p .. 'queue:' .. id
  local oldest = string.match(redis.call('LINDEX', key, 0), '^%d+ (%d+)')
  out[#out + 1] = id
  out[#out + 1] = redis.call('LLEN', key)
  out[#out + 1] = tonumber(redis.call('HGET', p .. 'queues', id))
  out[#out + 1] = tonumber(oldest)
end
return out
"""
)

#: A message kept in Redis: (message, queued, expires), in seconds.
Entry = tuple[bytes, float, float]


def parseEntry(raw: bytes) -> Entry:
    head, _, message = raw.partition(b"\n")
    expires, queued = head.split()
    return message, int(queued) / 1000, int(expires) / 1000


def formatEntry(entry: Entry) -> bytes:
    message, queued, expires = entry
    return b"%d %d\n" % (round(expires * 1000), round(queued * 1000)) + message


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisQueueStore:
    """
    The fleet's queues, kept in Redis through the C{backplane}'s
    connection (every call within its timeout, or a
    L{tcpcomm.fleet.settings.BackplaneUnavailable} failure): the shared
    store of L{tcpcomm.hub.queues.SharedQueues}.
    """

    def __init__(self, backplane: Backplane) -> None:
        self.backplane = backplane

    def put(
        self,
        clientId: str,
        message: bytes,
        ttl: float,
        maxMessages: int,
        maxBytes: int,
        totalBytes: int,
    ) -> Deferred[dict[str, Any]]:
        """
        Queue C{message} for C{clientId}, unless that would go over a bound
        or a node holds the client: C{{"queued": position, ...}}, C{{"full":
        bound, "held": ...}} or C{{"elsewhere": node}}, with the expired
        messages dropped and the fleet's totals.
        """

        def parsed(reply: list[Any]) -> dict[str, Any]:
            what = _text(reply[0])
            if what == "elsewhere":
                return {"elsewhere": _text(reply[1])}
            if what == "full":
                return {
                    "full": _text(reply[1]),
                    "held": reply[2],
                    "expired": reply[3],
                    "messages": reply[4],
                    "bytes": reply[5],
                }
            return {
                "queued": reply[1],
                "expired": reply[2],
                "messages": reply[3],
                "bytes": reply[4],
            }

        return self.backplane.script(
            PUT,
            clientId,
            message,
            max(1, round(ttl * 1000)),
            maxMessages,
            maxBytes,
            totalBytes,
        ).addCallback(parsed)

    def take(self, clientId: str) -> Deferred[tuple[float, list[Entry]]]:
        """
        Remove C{clientId}'s whole queue (atomically: no other node gets
        any of it): Redis' time, in seconds, and the entries, oldest first.
        """

        def parsed(reply: list[Any]) -> tuple[float, list[Entry]]:
            return int(reply[0]) / 1000, [parseEntry(raw) for raw in reply[1:]]

        return self.backplane.script(TAKE, clientId).addCallback(parsed)

    def restore(self, clientId: str, entries: list[Entry]) -> Deferred[Any]:
        """
        Put C{entries} back at the head of C{clientId}'s queue.
        """
        return self.backplane.script(RESTORE, clientId, *map(formatEntry, entries))

    def summary(self) -> Deferred[tuple[float, list[tuple[str, int, int, float]]]]:
        """
        Redis' time, and each id with messages waiting: how many, their
        bytes, and when the oldest was queued (seconds since the epoch).
        """

        def parsed(reply: list[Any]) -> tuple[float, list[tuple[str, int, int, float]]]:
            rows = reply[1:]
            return int(reply[0]) / 1000, [
                (_text(rows[i]), int(rows[i + 1]), int(rows[i + 2]), int(rows[i + 3]) / 1000)
                for i in range(0, len(rows), 4)
            ]

        return self.backplane.script(SUMMARY).addCallback(parsed)
