// relaytv web view: the films of this client's library, played on demand from their start.
// Each film block is fetched as its own fragmented MP4 (/library/VERSION/N.mp4) and appended
// in "sequence" mode, as the live player does, into a video element of its own that takes the
// live one's place; "Back to live" reloads the page, which starts the live player afresh.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const AHEAD = 12;               // seconds buffered ahead of the playhead, at most
  const BEHIND = 30;              // seconds kept behind it
  // What the library player did, for people (the panel) and for tests.
  const stats = { film: null, appended: 0, errors: 0, next: 0, ended: false };
  window.relaytvLibrary = stats;

  function waitUpdate(buffer) {
    return new Promise((resolve, reject) => {
      buffer.addEventListener("updateend", resolve, { once: true });
      buffer.addEventListener("error", reject, { once: true });
    });
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  async function feed(film, video, source) {
    const type = film.mime || 'video/mp4; codecs="avc1.64001e, mp4a.40.2"';
    const buffer = source.addSourceBuffer(type);
    buffer.mode = "sequence";
    for (let n = 0; n < film.blocks && stats.film === film.version;) {
      const end = buffer.buffered.length ? buffer.buffered.end(buffer.buffered.length - 1) : 0;
      if (end - video.currentTime > AHEAD) { await sleep(250); continue; }
      const answer = await fetch(`${film.segments}${n}.mp4`);
      if (!answer.ok) {          // busy remuxer (503): ask again shortly
        stats.errors++;
        await sleep(500);
        continue;
      }
      const data = await answer.arrayBuffer();
      if (stats.film !== film.version) return;
      if (video.currentTime > BEHIND + 10 && buffer.buffered.length) {
        buffer.remove(0, video.currentTime - BEHIND);
        await waitUpdate(buffer);
      }
      buffer.appendBuffer(data);
      await waitUpdate(buffer);
      stats.appended++;
      stats.next = ++n;
      if (video.paused) video.play().catch(() => {});
    }
    if (stats.film === film.version && source.readyState === "open") {
      source.endOfStream();
      stats.ended = true;
    }
  }

  function play(film) {
    const live = $("video"), video = $("vod");
    live.pause();
    live.removeAttribute("src");  // detaches the live MediaSource: its player stops
    live.load();
    live.hidden = true;
    video.hidden = false;
    Object.assign(stats, { film: film.version, appended: 0, errors: 0, next: 0, ended: false });
    $("library-now").textContent = `playing ${film.name} (${film.duration.toFixed(0)} s) from its start`;
    $("back-live").hidden = false;
    $("live").classList.remove("on");
    const source = new MediaSource();
    video.src = URL.createObjectURL(source);
    source.addEventListener("sourceopen", () => {
      feed(film, video, source).catch((err) => {
        stats.errors++;
        console.error("relaytv library player:", err);
      });
    }, { once: true });
  }

  function show(films) {
    const list = $("library");
    list.replaceChildren();
    if (!films.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "none";
      list.append(li);
    }
    for (const film of films) {
      const li = document.createElement("li");
      li.dataset.version = film.version;
      const label = document.createElement("span");
      label.textContent = `${film.name} · ${film.duration.toFixed(0)} s · ${film.origin}`;
      const button = document.createElement("button");
      button.className = "play";
      button.textContent = "Play";
      button.addEventListener("click", () => play(film));
      li.append(label, button);
      list.append(li);
    }
  }

  async function refresh() {
    try {
      const answer = await fetch("/api/library");
      if (answer.ok) show((await answer.json()).films);
    } catch (err) {
      // The client is gone or restarting: the next refresh tries again.
    }
  }

  $("back-live").addEventListener("click", () => location.reload());
  refresh();
  setInterval(refresh, 10000);
})();
