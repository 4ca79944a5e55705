// relaytv web view: the channel through Media Source Extensions, the relay tree in SVG.
// No framework, nothing fetched from elsewhere: everything comes from this client.
"use strict";

const $ = (id) => document.getElementById(id);
const video = $("video");

// What the page measured, for people (the facts panel) and for tests (window.relaytv).
// behind: [wall time, seconds behind live, play rate] while playing; skips: skips ahead;
// waits: times the page ran dry and waited for its start buffer; resumes: [blocks ahead,
// seconds waited] each time it went on.
const stats = { appended: 0, skipped: 0, errors: 0, lags: [], shown: [], mimes: [],
                stalls: [],     // stalls: [wall time it began, seconds] of each halt over 0.5 s
                behind: [], behind_now: null, rate: 1.0, skips: 0, waits: 0, resumes: [],
                vlc: null };    // the client's VLC player: behind_live_s, play_rate, stale
window.relaytv = stats;

function size(n) {
  const units = ["B", "kB", "MB", "GB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
}

// -- the player ------------------------------------------------------------------
// Each block is its own fragmented MP4 (init segment and fragments), appended in
// "sequence" mode so that blocks of any length play back to back; a change of
// codecs between blocks is a changeType() on the same buffer.

const source = new MediaSource();
video.src = URL.createObjectURL(source);
let buffer = null, mime = null, next = null, busy = false;
const known = new Map();          // number -> block metadata
const placed = [];                // [timeline start, end, block] of appended blocks
let edge;                         // LiveEdge (pace.js) once the status came; null: no control
let startBlocks = 2;              // blocks behind live at start and after running dry
let waiting = true, refillSince = null;   // dry (or not started): waiting for the start buffer

function offer(block) {
  if (next !== null && block.number < next) return;
  known.set(block.number, block);
  for (const n of known.keys()) if (n < block.number - 16) known.delete(n);
  pump();
}

function waitUpdate() {
  return new Promise((resolve, reject) => {
    buffer.addEventListener("updateend", resolve, { once: true });
    buffer.addEventListener("error", reject, { once: true });
  });
}

async function pump() {
  if (busy || source.readyState !== "open") return;
  busy = true;
  try {
    while (true) {
      const numbers = [...known.keys()].filter((n) => next === null || n >= next).sort((a, b) => a - b);
      if (!numbers.length) break;
      if (next === null) next = Math.max(numbers[0], numbers[numbers.length - 1] - startBlocks + 1);
      const block = known.get(next);
      if (!block) { next++; continue; }
      const answer = await fetch(`/seg/${block.number}.mp4`);
      if (!answer.ok) { stats.errors++; next++; continue; }
      const data = await answer.arrayBuffer();
      const type = block.mime || 'video/mp4; codecs="avc1.64001e, mp4a.40.2"';
      if (!buffer) {
        buffer = source.addSourceBuffer(type);
        buffer.mode = "sequence";
      } else if (type !== mime && buffer.changeType) {
        buffer.changeType(type);
      }
      if (type !== mime) stats.mimes.push(type);
      mime = type;
      await trim();
      const start = buffer.buffered.length ? buffer.buffered.end(buffer.buffered.length - 1) : 0;
      buffer.appendBuffer(data);
      await waitUpdate();
      const end = buffer.buffered.length ? buffer.buffered.end(buffer.buffered.length - 1) : start;
      placed.push([start, end, block]);
      if (placed.length > 32) placed.shift();
      stats.appended++;
      next = block.number + 1;
    }
  } catch (err) {
    stats.errors++;
    console.error("relaytv player:", err);
  } finally {
    busy = false;
  }
}

async function trim() {
  // Keep about half a minute behind the playhead: bounded memory on long watches.
  if (video.currentTime > 40 && buffer.buffered.length && !buffer.updating) {
    buffer.remove(0, video.currentTime - 30);
    await waitUpdate();
  }
}

let lastTime = 0, lastMove = null;
function noteStall(t) {
  const now = Date.now() / 1000;
  if (t !== lastTime) {
    if (lastMove !== null && now - lastMove > 0.5) {
      stats.stalls.push([lastMove, Math.round((now - lastMove) * 1000) / 1000]);
      if (stats.stalls.length > 100) stats.stalls.shift();
    }
    lastTime = t;
    lastMove = now;
  }
}

// -- near live: the same rule as the VLC player (player/live.py, player/machine.py) -----
// Behind live: what is buffered ahead of the picture plus the blocks known but not yet
// appended, by their real durations. The rate follows LiveEdge; past its skip_behind_s the
// page skips ahead to resume_behind_s; when it runs dry it waits for its start buffer.

function unappended() {
  return [...known.values()].filter((b) => next === null || b.number >= next)
    .sort((a, b) => a.number - b.number);
}

function bufferEnd() {
  const ranges = video.buffered;
  return ranges.length ? ranges.end(ranges.length - 1) : 0;
}

function behindLive() {
  const ahead = Math.max(0, bufferEnd() - video.currentTime);
  return ahead + unappended().reduce((sum, b) => sum + b.duration, 0);
}

function blocksAhead() {
  const t = video.currentTime;
  return placed.filter(([, end]) => end > t + 0.05).length + unappended().length;
}

function skipAhead(behind) {
  // Keep the newest blocks that add up to resume_behind_s (at least one), like the player.
  const queue = unappended();
  let kept = 0, total = 0;
  for (let i = queue.length - 1; i >= 0; i--) {
    if (kept >= 1 && total + queue[i].duration > edge.rule.resume_behind_s) break;
    kept++;
    total += queue[i].duration;
  }
  const dropped = queue.slice(0, queue.length - kept);
  for (const b of dropped) known.delete(b.number);
  if (dropped.length) next = queue[dropped.length].number;
  const end = bufferEnd();
  const target = dropped.length ? end - 0.1 : end - (edge.rule.resume_behind_s - total);
  if (target > video.currentTime) video.currentTime = target;
  stats.skipped += dropped.length;
  stats.skips++;
  console.info(`relaytv player: ${behind.toFixed(1)} s behind live, skipped ahead`);
}

function pace(now) {
  if (edge === undefined) return;           // the client's rule is not known yet
  let behind = behindLive();
  if (edge === null) {                      // --max-behind 0: play what comes, at 1.0x
    if (waiting && blocksAhead()) { waiting = false; video.play().catch(() => {}); }
    $("page-behind").textContent = `${behind.toFixed(1)} s`;
    return;
  }
  if (waiting) {
    if (blocksAhead() === 0) { refillSince = null; return; }
    if (refillSince === null) refillSince = now;
    if (blocksAhead() < startBlocks && now - refillSince < edge.rule.start_timeout_s) return;
    waiting = false;
    stats.resumes.push([blocksAhead(), Math.round((now - refillSince) * 1000) / 1000]);
    if (stats.resumes.length > 100) stats.resumes.shift();
    if (edge.hopeless(behind)) { skipAhead(behind); behind = behindLive(); }
    video.play().catch(() => {});
  } else if (behind < 0.25 && !unappended().length) {
    waiting = true;            // ran dry: refill the start buffer rather than stall every block
    refillSince = null;
    stats.waits++;
    video.pause();
    return;
  } else if (edge.hopeless(behind)) {
    skipAhead(behind);
    behind = behindLive();
  }
  const rate = edge.update(behind, now);
  if (video.playbackRate !== rate) video.playbackRate = rate;
  stats.behind_now = Math.round(behind * 1000) / 1000;
  stats.rate = rate;
  if (!video.paused) {
    stats.behind.push([Math.round(Date.now()) / 1000, stats.behind_now, rate]);
    if (stats.behind.length > 1000) stats.behind.shift();
  }
  $("page-behind").textContent = `${behind.toFixed(1)} s at ${rate.toFixed(2)}x`;
}

function watchPlayhead() {
  const t = video.currentTime;
  if (t > 0) noteStall(t);
  const ranges = video.buffered;
  // Jump the small holes between blocks (audio and video of a block rarely end together).
  for (let i = 0; i < ranges.length; i++) {
    if (t < ranges.start(i) && ranges.start(i) - t < 1.0 && (i === 0 || t >= ranges.end(i - 1) - 0.1)) {
      video.currentTime = ranges.start(i) + 0.01;
      break;
    }
  }
  pace(performance.now() / 1000);
  for (const [start, end, block] of placed) {
    if (t >= start && t < end) {
      if (stats.shown[stats.shown.length - 1] !== block.number) {
        stats.shown.push(block.number);
        const lag = Date.now() / 1000 - block.stored_at - (t - start);
        stats.lags.push(Math.round(lag * 1000) / 1000);
        if (stats.lags.length > 200) { stats.lags.shift(); stats.shown.shift(); }
      }
      $("block").textContent = `#${block.number} (${block.duration.toFixed(2)} s, ${block.width}x${block.height})`;
      $("lag").textContent = `${(Date.now() / 1000 - block.stored_at - (t - start)).toFixed(1)} s`;
    }
  }
}

source.addEventListener("sourceopen", async () => {
  const answer = await fetch("/api/blocks");
  const { blocks } = await answer.json();
  for (const block of blocks.slice(-startBlocks)) offer(block);
});
setInterval(watchPlayhead, 250);

// -- the events --------------------------------------------------------------------

const EVENT_TEXT = {
  parent: (d) => `parent changed: ${d.from || "none"} \u2192 ${d.to || "none"} (depth ${d.depth})`,
  child_joined: (d) => `child joined: ${d.child}`,
  child_left: (d) => `child left: ${d.child}`,
  repair_started: () => "repair started",
  repair_ended: (d) => `repair ended: ${d.blocks_fetched} block(s) fetched, ${d.blocks_lost} lost`,
  swap: (d) => `swapped places (now under ${d.parent})`,
  stall: (d) => `stall: no block for ${d.seconds} s`,
  stall_ended: () => "blocks flowing again",
  state: (d) => `state: ${d.from} \u2192 ${d.to}`,
};

function logEvent(name, data) {
  const item = document.createElement("li");
  const time = document.createElement("span");
  time.className = "t";
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, EVENT_TEXT[name](data));
  const list = $("events");
  $("no-events")?.remove();
  list.prepend(item);
  while (list.children.length > 14) list.lastChild.remove();
}

function showPlayer(d) {
  // The VLC player of this client (status.json's behind_live_s and play_rate).
  stats.vlc = d;
  $("vlc-behind").textContent = d.behind_live_s === null || d.behind_live_s === undefined
    ? "no player" : `${d.behind_live_s.toFixed(1)} s at ${d.play_rate.toFixed(2)}x` +
      (d.stale ? " (stopped)" : "");
}

let status = null;
function showStatus(s) {
  status = s;
  if (edge === undefined) {
    edge = s.live_edge ? new LiveEdge(s.live_edge) : null;
    if (edge) startBlocks = s.live_edge.start_blocks;
    $("target").textContent = edge ? `\u2264 ${edge.rule.max_behind_s} s, up to ${edge.rule.max_rate}x`
      : "off (--max-behind 0)";
  }
  showPlayer({ ...s, stale: s.player ? s.player.stale : null });
  const parent = s.parent === "server" ? `server ${s.parent_server}` :
    s.parent ? `${s.parent.ip}:${s.parent.port}` : "none";
  $("me").textContent = `${s.ip}:${s.peer_port}`;
  $("parent").textContent = parent;
  $("depth").textContent = s.depth;
  $("bytes").textContent = `${size(s.bytes_received)} / ${size(s.bytes_sent)}`;
  $("headline").textContent = `channel ${s.channel} \u00b7 ${s.state} \u00b7 ` +
    `${s.children.length}/${s.max_children} children`;
  $("live").classList.toggle("on", s.state === "direct" || s.state === "attached");
}

const events = new EventSource("/events");
events.addEventListener("hello", (e) => {
  const d = JSON.parse(e.data);
  showStatus(d.status);
  drawTree(d.tree);
});
events.addEventListener("block", (e) => offer(JSON.parse(e.data)));
events.addEventListener("tree", (e) => drawTree(JSON.parse(e.data)));
events.addEventListener("behind_live", (e) => showPlayer(JSON.parse(e.data)));
for (const name of Object.keys(EVENT_TEXT)) {
  events.addEventListener(name, (e) => {
    logEvent(name, JSON.parse(e.data));
    if (name !== "stall" && name !== "stall_ended") refreshStatus();
  });
}

async function refreshStatus() {
  // Only after an event that changed it: the page never polls.
  const answer = await fetch("/api/status");
  if (answer.ok) showStatus(await answer.json());
}

// -- the tree ----------------------------------------------------------------------------
// A tidy layout: leaves side by side, each relay centred over its children.

const SVG = "http://www.w3.org/2000/svg";
const BOX_W = 150, BOX_H = 58, GAP_X = 14, GAP_Y = 46;

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawTree(tree) {
  const svg = $("tree");
  const nodes = tree.nodes || [];
  const byAddr = new Map(nodes.map((n) => [n.addr, n]));
  const kids = new Map([["server", []]]);
  for (const n of nodes) kids.set(n.addr, []);
  const orphans = [];
  for (const n of nodes) {
    const parent = n.parent === "server" ? "server" : n.parent;
    if (parent && kids.has(parent)) kids.get(parent).push(n.addr);
    else orphans.push(n.addr);
  }
  for (const list of kids.values()) list.sort();
  const pos = new Map();
  let column = 0;
  function place(addr, depth) {
    const children = kids.get(addr) || [];
    let x;
    if (!children.length) { x = column++; } else {
      const xs = children.map((c) => place(c, depth + 1));
      x = (xs[0] + xs[xs.length - 1]) / 2;
    }
    pos.set(addr, [x, depth]);
    return x;
  }
  place("server", 0);
  for (const addr of orphans) place(addr, byAddr.get(addr).depth || 1);
  const width = Math.max(column, 1) * (BOX_W + GAP_X) + GAP_X;
  const depth = Math.max(...[...pos.values()].map((p) => p[1]), 1);
  const height = (depth + 1) * (BOX_H + GAP_Y) + GAP_Y;
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = Math.min(900, Math.max(420, height * Math.min(1, 900 / width))) + "px";
  svg.replaceChildren();
  const at = (addr) => {
    const [x, d] = pos.get(addr);
    return [GAP_X + x * (BOX_W + GAP_X), GAP_Y / 2 + d * (BOX_H + GAP_Y)];
  };
  for (const [parent, children] of kids) {
    if (!pos.has(parent)) continue;
    const [px, py] = at(parent);
    for (const child of children) {
      const [cx, cy] = at(child);
      svg.append(el("path", { class: "edge", d: `M${px + BOX_W / 2},${py + BOX_H} ` +
        `C${px + BOX_W / 2},${py + BOX_H + GAP_Y / 2} ${cx + BOX_W / 2},${cy - GAP_Y / 2} ${cx + BOX_W / 2},${cy}` }));
    }
  }
  const [sx, sy] = at("server");
  const server = el("g", { class: "node server", "data-addr": "server" });
  server.append(el("rect", { class: "box", x: sx, y: sy, width: BOX_W, height: BOX_H, rx: 8 }),
    el("text", { x: sx + 10, y: sy + 22 }, "channel server"),
    el("text", { class: "small", x: sx + 10, y: sy + 40 },
      `${(tree.direct_clients || []).length} direct client(s)`));
  svg.append(server);
  for (const n of nodes) {
    const [x, y] = at(n.addr);
    const g = el("g", { class: `node state-${n.state}${n.addr === tree.self ? " self" : ""}`,
                        "data-addr": n.addr, "data-parent": n.parent || "", "data-state": n.state });
    g.append(el("rect", { class: "box", x, y, width: BOX_W, height: BOX_H, rx: 8 }),
      el("text", { x: x + 8, y: y + 16 }, n.addr),
      el("text", { class: "small", x: x + 8, y: y + 31 },
        `d${n.depth} \u00b7 ${n.children}/${n.max_children} \u00b7 \u2191${size(n.upload_rate)}/s`),
      el("text", { class: "small", x: x + 8, y: y + 46 },
        `\u2191${size(n.bytes_sent)} \u2193${size(n.bytes_received)} \u00b7 rep ${n.repairs}`));
    const title = el("title", {}, `${n.addr}: ${n.state}, parent ${n.parent}`);
    g.append(title);
    svg.append(g);
  }
  $("treeinfo").textContent = `${nodes.length} client(s)` +
    (tree.complete === false ? " (some direct clients did not answer)" : "") +
    (tree.updated_at ? ` \u00b7 updated ${new Date(tree.updated_at * 1000).toLocaleTimeString()}` : "");
}
