// jitrec report view. Plain JavaScript, no framework, no build step: embedded in jitrec-player.
// Talks only to the JSON API. Each page calls one of the functions at the bottom.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);

let me = null; // the signed-in user: {user, role, csrf}

async function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers || {});
  if (opts.method && opts.method !== "GET" && me) headers["X-CSRF-Token"] = me.csrf;
  const r = await fetch(path, Object.assign({}, opts, { headers, credentials: "same-origin" }));
  if (r.status === 401) {
    location.href = "/login";
    throw new Error("signed out");
  }
  return r;
}

async function apiJson(path, opts) {
  const r = await api(path, opts);
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function showError(e) {
  const m = $("#message");
  if (m) m.textContent = e ? String(e.message || e) : "";
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    // Through the CSSOM, which the Content-Security-Policy (no 'unsafe-inline') allows.
    else if (k === "style") e.style.cssText = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return e;
}

function clock(sec) {
  if (!isFinite(sec) || sec < 0) sec = 0;
  const h = Math.floor(sec / 3600), m = Math.floor(sec / 60) % 60, s = sec % 60;
  const ss = s.toFixed(1).padStart(4, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function bytes(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + " GB";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + " MB";
  if (n >= 1e3) return (n / 1e3).toFixed(0) + " kB";
  return n + " B";
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

/** How far the signatures vouch for a session: only "verified" is green. */
function trustBadge(label) {
  const cls = label === "verified" ? "verified" : "unverified";
  return el("span", { class: `badge ${cls}`, title: "authenticity (docs/player.md, Enrolment)" }, label || "unknown");
}

function badge(status) {
  return el("span", { class: `badge ${status}` }, status);
}

/** A session's risk: its most severe detection-rule flag. */
function riskBadge(risk) {
  return el("span", { class: `badge risk-${risk || "none"}`, title: "most severe flag (docs/rules.md)" }, risk || "no flags");
}

async function header() {
  me = await apiJson("/api/me");
  $("#me").textContent = `${me.user} (${me.role})`;
  if (me.role === "admin") {
    $("#audit-link").hidden = false;
    $("#retention-link").hidden = false;
    const m = $("#machines-link");
    if (m) m.hidden = false;
  }
  $("#logout").addEventListener("click", async () => {
    await api("/api/logout", { method: "POST" });
    location.href = "/login";
  });
}

// ---- sign-in ------------------------------------------------------------------------------

function loginPage() {
  // Why single sign-on sent the browser back here, if it did: a code, shown as this page's own
  // sentence (a crafted link cannot put words on the page).
  const reasons = {
    sso_unreachable: "The identity provider cannot be reached; try again later.",
    sso_failed: "Single sign-on failed.",
    sso_denied: "The identity provider did not sign you in.",
    sso_restart: "Single sign-on failed: start again from this page.",
    sso_no_role: "You are signed in at the identity provider, but no role here is yours.",
    sso_disabled: "Your account is disabled here.",
  };
  const why = reasons[new URLSearchParams(location.search).get("error")];
  if (why) $("#error").textContent = why;
  fetch("/api/login/options")
    .then((r) => r.json())
    .then((o) => {
      $("#sso").hidden = !o.oidc;
      $("#signin").hidden = !o.local;
    })
    .catch(() => {});
  $("#signin").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("#error").textContent = "";
    const r = await fetch("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: $("#user").value, password: $("#password").value }),
    });
    if (r.ok) location.href = "/";
    else $("#error").textContent = (await r.json().catch(() => ({}))).error || "Sign-in failed";
  });
}

// ---- session list -------------------------------------------------------------------------

async function listPage() {
  await header();
  const form = $("#filters");
  const params = new URLSearchParams(location.search);
  for (const [k, v] of params) if (form.elements[k]) form.elements[k].value = v;
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const e of form.elements) if (e.name && e.value) p.set(e.name, e.value);
    location.search = p.toString();
  });
  const q = new URLSearchParams();
  for (const [k, v] of params) {
    if (k === "from" || k === "to") {
      // Dates are local days; "to" includes its whole day.
      const d = new Date(v + "T00:00:00");
      if (k === "to") d.setDate(d.getDate() + 1);
      q.set(k, d.toISOString());
    } else q.set(k, v);
  }
  try {
    const page = await apiJson("/api/sessions?" + q.toString());
    const body = $("#sessions tbody");
    body.replaceChildren();
    if (!page.sessions.length) {
      body.append(el("tr", {}, el("td", { colspan: "10", class: "muted" }, "No sessions match.")));
    }
    for (const s of page.sessions) {
      const link = `/session/${s.id}`;
      const labels = [s.company, s.location].filter(Boolean).join(" / ");
      const first = el("td", {}, el("a", { href: link }, when(s.started_at)));
      if (s.hits.length) {
        first.append(el("ul", { class: "hits" }, ...s.hits.map((h) =>
          el("li", {}, el("a", { href: `${link}?t=${(h.media_us / 1e6).toFixed(3)}`, class: "hit" },
            `${clock(h.media_us / 1e6)} ${h.text}`)))));
      }
      body.append(el("tr", { class: "session", "data-id": s.id }, first,
        el("td", {}, s.user_name), el("td", {}, s.hostname), el("td", {}, labels),
        el("td", {}, s.authorized_by || "unknown"), el("td", {}, clock(s.duration_us / 1e6)),
        el("td", {}, bytes(s.bytes)), el("td", {}, badge(s.status), " ", trustBadge(s.authenticity)),
        el("td", { class: "risk" }, riskBadge(s.risk)),
        el("td", { class: "review" }, s.review ? `${s.review.state} by ${s.review.reviewer}` : "unreviewed")));
    }
    const next = $("#next"), prev = $("#prev");
    next.disabled = !page.next;
    next.onclick = () => {
      const p = new URLSearchParams(location.search);
      p.set("after", page.next);
      location.search = p.toString();
    };
    prev.disabled = !params.get("after");
    prev.onclick = () => history.back();
  } catch (e) {
    showError(e);
  }
}

// ---- review queue and coverage ------------------------------------------------------------

async function reviewPage() {
  await header();
  const order = $("#review-order"), period = $("#coverage-period");
  const load = async () => {
    try {
      const q = await apiJson(`/api/review/queue?order=${order.value}&limit=200`);
      const c = q.counts;
      $("#review-counts").textContent = `${c.unreviewed} unreviewed (${c.unreviewed_high_risk} of high risk or above) · ${c.flagged} flagged for follow-up · ${c.reviewed} reviewed`;
      const body = $("#review-queue tbody");
      body.replaceChildren(...q.sessions.map((s) => el("tr", { class: "session", "data-id": s.id },
        el("td", {}, riskBadge(s.risk)), el("td", {}, el("a", { href: `/session/${s.id}` }, when(s.started_at))),
        el("td", {}, s.user_name), el("td", {}, s.hostname), el("td", {}, s.authorized_by || "unknown"),
        el("td", {}, badge(s.status)))));
      if (!q.sessions.length) body.append(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "Nothing waiting.")));
      const cov = await apiJson(`/api/review/coverage?period=${period.value}&periods=8`);
      $("#coverage tbody").replaceChildren(...cov.periods.map((p) => el("tr", {},
        el("td", {}, new Date(p.from).toLocaleDateString()), el("td", {}, String(p.sessions)),
        el("td", {}, String(p.reviewed)), el("td", {}, String(p.flagged)), el("td", {}, String(p.unreviewed)),
        el("td", { class: "share" }, p.share_reviewed == null ? "-" : `${Math.round(p.share_reviewed * 100)}%`))));
    } catch (e) { showError(e); }
  };
  order.addEventListener("change", load);
  period.addEventListener("change", load);
  await load();
}

// ---- player -------------------------------------------------------------------------------

const AHEAD = 30; // seconds buffered ahead of the playhead
const BEHIND = 60; // seconds kept behind it
const POLL_MS = 1000; // live sessions: how often to look for new chunks

class MsePlayer {
  constructor(video, detail) {
    this.video = video;
    this.id = detail.session.id;
    this.inits = new Map(detail.inits.map((i) => [i.id, i]));
    this.chunks = detail.chunks;
    this.closed = detail.session.closed;
    this.next = 0; // index into chunks of the next one to append
    this.appendedInit = null;
    this.ended = false;
    this.busy = false;
    this.followLive = !this.closed;
    this.error = null;
    this.ms = new MediaSource();
    video.src = URL.createObjectURL(this.ms);
    this.ms.addEventListener("sourceopen", () => this.open(), { once: true });
    video.addEventListener("seeking", () => this.onSeek());
    video.addEventListener("timeupdate", () => this.pump());
  }

  end() {
    const last = this.chunks[this.chunks.length - 1];
    return last ? last.media_end_us / 1e6 : 0;
  }

  open() {
    this.opened = true;
    this.ensureBuffer();
    this.pump();
  }

  // The source buffer needs the codec of the first init segment, so a live session that has
  // no chunk yet gets it when its first chunk arrives.
  ensureBuffer() {
    if (this.sb || !this.opened) return;
    const first = this.chunks[0];
    const init = first && this.inits.get(first.init_id);
    if (!init) return;
    this.sb = this.ms.addSourceBuffer(`video/mp4; codecs="${init.codec}"`);
    this.sb.mode = "segments";
    this.sb.addEventListener("error", () => { this.error = "the browser could not decode a segment"; });
    if (this.closed) this.ms.duration = this.end();
  }

  append(buf) {
    return new Promise((resolve, reject) => {
      const done = () => { this.sb.removeEventListener("error", fail); resolve(); };
      const fail = () => { this.sb.removeEventListener("updateend", done); reject(new Error("append failed")); };
      this.sb.addEventListener("updateend", done, { once: true });
      this.sb.addEventListener("error", fail, { once: true });
      this.sb.appendBuffer(buf);
    });
  }

  remove(a, b) {
    return new Promise((resolve) => {
      this.sb.addEventListener("updateend", resolve, { once: true });
      this.sb.remove(a, b);
    });
  }

  bufferedAhead() {
    const t = this.video.currentTime, b = this.sb.buffered;
    for (let i = 0; i < b.length; i++) if (b.start(i) <= t + 0.05 && t < b.end(i)) return b.end(i) - t;
    return 0;
  }

  async fetchBytes(url) {
    const r = await api(url);
    if (!r.ok) throw new Error(`${url}: ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  }

  // Appends chunks until AHEAD seconds are buffered; evicts what is far behind; ends the stream
  // after the last chunk of a closed session. One pump at a time.
  async pump() {
    if (!this.sb || this.busy || this.ms.readyState !== "open") return;
    this.busy = true;
    try {
      while (this.next < this.chunks.length && this.bufferedAhead() < AHEAD) {
        const c = this.chunks[this.next];
        if (this.appendedInit !== c.init_id) {
          await this.append(await this.fetchBytes(`/api/sessions/${this.id}/init/${c.init_id}.mp4`));
          this.appendedInit = c.init_id;
        }
        const seq = this.next;
        const bytes = await this.fetchBytes(`/api/sessions/${this.id}/chunks/${c.seq}.m4s`);
        if (seq !== this.next) continue; // a seek moved the position meanwhile
        await this.append(bytes);
        this.next++;
      }
      const t = this.video.currentTime;
      if (this.sb.buffered.length && t - this.sb.buffered.start(0) > BEHIND + 10) {
        await this.remove(0, t - BEHIND);
      }
      if (this.closed && this.next >= this.chunks.length && !this.ended && !this.sb.updating) {
        this.ended = true;
        this.ms.endOfStream();
      }
    } catch (e) {
      this.error = String(e.message || e);
      showError(`Playback: ${this.error}`);
    } finally {
      this.busy = false;
    }
  }

  // The chunk to start from for time t: the last chunk starting with a keyframe at or before t.
  startChunk(t) {
    const us = t * 1e6;
    let idx = 0;
    for (let i = 0; i < this.chunks.length; i++) {
      const c = this.chunks[i];
      if (c.media_start_us > us) break;
      if (c.keyframe) idx = i;
    }
    return idx;
  }

  async onSeek() {
    const t = this.video.currentTime;
    if (!this.sb) return;
    const b = this.sb.buffered;
    for (let i = 0; i < b.length; i++) if (b.start(i) <= t && t < b.end(i)) return;
    // Not buffered: restart appending from the keyframe chunk before t.
    while (this.busy) await new Promise((r) => setTimeout(r, 10));
    if (this.sb.updating) this.sb.abort();
    this.next = this.startChunk(t);
    this.appendedInit = null;
    if (this.ended && this.ms.readyState === "ended") this.ended = false;
    this.pump();
  }

  // Live sessions: new chunks are appended as they land; the playhead follows the live edge
  // unless the reviewer moved away from it.
  addChunks(chunks, inits, closed) {
    for (const i of inits) this.inits.set(i.id, i);
    const known = new Set(this.chunks.map((c) => c.seq));
    for (const c of chunks) if (!known.has(c.seq)) this.chunks.push(c);
    this.chunks.sort((a, b) => a.seq - b.seq);
    this.closed = closed;
    this.ensureBuffer();
    this.pump().then(() => {
      if (!this.followLive || !this.sb || !this.sb.buffered.length) return;
      const end = this.sb.buffered.end(this.sb.buffered.length - 1);
      if (end - this.video.currentTime > 3) this.video.currentTime = Math.max(0, end - 1);
    });
  }
}

const SHOWN = new Set(["process_start", "window_focus", "window_title", "jit_start", "jit_stop",
  "gap", "capture_error", "frames_dropped", "events_summarised", "recorder_started", "recorder_stopped",
  "notice_shown", "notice_acknowledged", "notice_failed", "fail_closed", "change"]);

function renderMeta(s, retention, trust) {
  const dl = el("dl");
  const item = (k, v) => dl.append(el("div", {}, el("dt", {}, k), el("dd", {}, v)));
  item("User", `${s.user_name} (${s.user_id})`);
  item("Machine", `${s.hostname} (${s.machine_id})`);
  item("Company / location / computer", [s.company, s.location, s.computer].map((x) => x || "-").join(" / "));
  item("Authorised by", `${s.authorized_by || "unknown"}${s.reason ? " · " + s.reason : ""}`);
  item("Started", when(s.started_at));
  item("Ended", s.ended_at ? `${when(s.ended_at)} (${(s.end_reason || "").replace("_", " ")})` : "still recording");
  item("Duration / size", `${clock(s.duration_us / 1e6)} · ${bytes(s.bytes)} · ${s.chunks} chunks`);
  dl.append(el("div", {}, el("dt", {}, "Status"), el("dd", {}, badge(s.status))));
  // Silent: what arrived last, on the player's clock (docs/player.md, Session status).
  const quiet = s.problems.find((p) => p.kind === "silent" && p.silence);
  if (quiet) {
    const q = quiet.silence, c = q.last_chunk;
    const last = c
      ? `chunk ${c.seq}, up to ${clock(c.media_end_us / 1e6)} of the recording, arrived ${when(c.arrived_at)}`
      : `only the header, arrived ${when(q.last_arrival)}`;
    dl.append(el("div", {}, el("dt", {}, "Last arrived"), el("dd", { id: "last-arrived", class: "error" },
      `${last} · nothing since; silent since ${when(q.since)} (a chunk every ${(q.chunk_ms / 1e3).toFixed(1)} s expected)`)));
  }
  if (trust) {
    const a = trust.authenticity || {};
    const words = {
      verified: `signed by the approved key of ${s.hostname} (${a.fingerprint})`,
      unsigned: "unsigned (format v1): consistent, but anyone with bucket access could have written it",
      pending: `signed by a key not yet approved for this machine (${a.fingerprint})`,
      not_enrolled: `NOT the machine's key (${a.fingerprint}): ${a.why}`,
      broken: `signed by the machine's key (${a.fingerprint}), but the session is broken: nothing is vouched for`,
      unknown: "unknown",
    };
    dl.append(el("div", {}, el("dt", {}, "Authenticity"), el("dd", { id: "authenticity" },
      trustBadge(a.state === "verified" ? "verified" : a.state), " ", words[a.state] || "")));
    const e = trust.elevation || {};
    if (e.continues || (e.continued_by || []).length) {
      // One elevation, split where the recorder died and was restarted.
      const dd = el("dd", { id: "elevation", class: "error" });
      if (e.continues) dd.append("continues ", el("a", { href: `/session/${e.continues}` }, e.continues), " (the recorder died and was restarted)");
      for (const c of e.continued_by || []) {
        if (dd.childNodes.length) dd.append("; ");
        dd.append("continued in ", el("a", { href: `/session/${c}` }, c), " (the recorder died and was restarted)");
      }
      dl.append(el("div", {}, el("dt", {}, "Same elevation"), dd));
    }
    if (trust.stopped_by) {
      const c = trust.stopped_by;
      dl.append(el("div", {}, el("dt", {}, "Stopped by"), el("dd", { id: "stopped-by",
        class: c.recorded_user ? "error" : "" }, (c.recorded_user ? "the recorded user: " : "") + c.detail)));
    }
  }
  if (retention) {
    const r = retention.hold
      ? `legal hold: ${retention.hold.reason} (${retention.hold.set_by})`
      : retention.policy
        ? `${retention.policy}${retention.expires_at ? ", expires " + when(retention.expires_at) : ""}`
        : "no policy: kept";
    const dd = el("dd", { id: "retention" }, r);
    if (me && me.role === "admin") {
      const held = Boolean(retention.hold);
      dd.append(" ", el("button", { class: "link", id: "hold", onclick: () => toggleHold(s.id, held) },
        held ? "Release hold" : "Place legal hold"));
    }
    dl.append(el("div", {}, el("dt", {}, "Retention"), dd));
  }
  const meta = $("#meta");
  meta.replaceChildren(dl);
  if (s.problems.length) {
    meta.append(el("ul", { class: "problems" }, ...s.problems.map((p) => el("li", {}, p.message))));
  }
}

function drawMarks(detail, duration) {
  const marks = $("#marks");
  marks.replaceChildren();
  if (!duration) return;
  const pct = (us) => `${Math.min(100, (us / 1e6 / duration) * 100)}%`;
  const chunks = detail.chunks;
  for (let i = 1; i < chunks.length; i++) {
    if (chunks[i].seq !== chunks[i - 1].seq + 1 || chunks[i].media_start_us > chunks[i - 1].media_end_us) {
      const a = chunks[i - 1].media_end_us, b = chunks[i].media_start_us;
      marks.append(el("span", { class: "gap", title: "missing chunks", style: `left:${pct(a)};width:calc(${pct(b)} - ${pct(a)} + 2px)` }));
    }
  }
  for (const e of detail.events) {
    if (e.kind === "gap") {
      const a = e.data.from_us, b = e.data.to_us;
      marks.append(el("span", { class: "gap", title: e.text, style: `left:${pct(a)};width:calc(${pct(b)} - ${pct(a)} + 2px)` }));
    } else if (e.kind === "process_start" || e.kind === "jit_start" || e.kind === "jit_stop") {
      marks.append(el("span", { class: "event", style: `left:${pct(e.media_us)}` }));
    }
  }
  // Detection-rule matches: a mark of their severity's colour, on top of the others.
  for (const f of detail.flags || []) {
    marks.append(el("span", { class: `flag ${f.severity}`, title: `${f.severity}: ${f.sentence}`,
      "data-rule": f.rule, style: `left:${pct(f.media_us)}` }));
  }
  if (detail.session.status === "interrupted" || detail.session.status === "silent") {
    const st = detail.session.status;
    marks.append(el("span", { class: st, title: st, style: "right:0;width:4px" }));
  }
}

/**
 * The filmstrip: one picture per slot of the seek bar's width, each the first frame of the last
 * chunk starting with a keyframe before the slot's middle (the player makes them from the
 * witnessed media, in a confined process). Redrawn only when the pictures it shows change.
 */
function drawFilmstrip(detail, duration, seekTo) {
  const strip = $("#filmstrip");
  const keys = detail.chunks.filter((c) => c.keyframe);
  if (!duration || !keys.length) { strip.replaceChildren(); strip.dataset.shown = ""; return; }
  const slots = Math.max(1, Math.min(40, Math.floor((strip.clientWidth || 640) / 96)));
  const picks = [];
  for (let i = 0, k = 0; i < slots; i++) {
    const mid = ((i + 0.5) / slots) * duration * 1e6;
    while (k + 1 < keys.length && keys[k + 1].media_start_us <= mid) k++;
    picks.push(keys[k]);
  }
  // Slots showing the same picture are one, as wide as they are together.
  const runs = [];
  for (const c of picks) {
    if (runs.length && runs[runs.length - 1].c === c) runs[runs.length - 1].n++;
    else runs.push({ c, n: 1 });
  }
  const shown = runs.map((r) => `${r.c.seq}x${r.n}`).join(",");
  if (strip.dataset.shown === shown) return;
  strip.dataset.shown = shown;
  strip.replaceChildren(...runs.map(({ c, n }) => el("img", {
    style: `flex-grow:${n}`,
    src: `/api/sessions/${detail.session.id}/thumbs/${c.seq}.png`, alt: `screen at ${clock(c.media_start_us / 1e6)}`,
    title: clock(c.media_start_us / 1e6), "data-seq": String(c.seq),
    onclick: () => seekTo(c.media_start_us / 1e6),
  })));
}

/** Open but nothing arriving: say so where LIVE is, until chunks come again. */
function liveBadge(status) {
  const live = $("#live"), silent = status === "silent";
  live.textContent = silent ? "SILENT" : "LIVE";
  live.className = `badge ${silent ? "silent" : "recording"}`;
}

async function toggleHold(id, held) {
  try {
    let r;
    if (held) {
      r = await apiJson(`/api/sessions/${id}/hold`, { method: "DELETE" });
    } else {
      const reason = prompt("Reason for the legal hold");
      if (!reason) return;
      r = await apiJson(`/api/sessions/${id}/hold`, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ reason }),
      });
    }
    const d = await apiJson(`/api/sessions/${id}`);
    renderMeta(d.session, d.retention, d);
    // Who enforces the hold: the bucket itself (Object Lock) or only the retention job.
    const button = $("#hold");
    if (button && r && r.message) {
      button.after(el("span", { id: "hold-note", class: "note" }, ` ${held ? "Released; " : ""}${r.message}`));
    }
  } catch (e) {
    showError(e);
  }
}

/** The session's risk, its flags and its reviews, with the form to add one. */
function renderReview(detail) {
  const box = $("#review");
  const flags = detail.flags || [];
  const seekTo = (us) => { const v = $("#video"); if (window.jitrecPlayer) window.jitrecPlayer.followLive = false; v.currentTime = us / 1e6; };
  const list = el("ol", { id: "flags" }, ...flags.map((f) => el("li", {
    class: `flag-item ${f.severity}`, "data-rule": f.rule, "data-media-us": String(f.media_us),
    onclick: () => seekTo(f.media_us),
  }, el("span", { class: "t" }, clock(f.media_us / 1e6)), " ", el("span", { class: `badge risk-${f.severity}` }, f.severity),
    " ", f.sentence, el("span", { class: "muted" }, ` ${f.text}`))));
  // The change ledger: what the elevation changed on the machine, each at its moment.
  const changes = detail.events.filter((e) => e.kind === "change");
  const ledger = el("ol", { id: "ledger" }, ...changes.map((e) => el("li", {
    class: `change ${e.data.area || ""}`, "data-area": e.data.area || "", "data-action": e.data.action || "",
    "data-media-us": String(e.media_us), onclick: () => seekTo(e.media_us),
  }, el("span", { class: "t" }, clock(e.media_us / 1e6)), " ", e.text)));
  const history = el("ul", { id: "reviews" }, ...(detail.reviews || []).map((r) =>
    el("li", { class: r.state }, `${when(r.at)}: ${r.state} by ${r.reviewer}${r.comment ? ": " + r.comment : ""}`)));
  const state = el("select", { id: "review-state" }, el("option", { value: "reviewed" }, "Reviewed"), el("option", { value: "flagged" }, "Needs follow-up"));
  const comment = el("input", { id: "review-comment", placeholder: "Comment", maxlength: "2000" });
  const said = el("span", { id: "review-message", class: "error", role: "alert" });
  const send = el("button", { id: "review-submit", onclick: async (ev) => {
    ev.preventDefault();
    said.textContent = "";
    try {
      await apiJson(`/api/sessions/${detail.session.id}/review`, {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ state: state.value, comment: comment.value }),
      });
      comment.value = "";
      const d = await apiJson(`/api/sessions/${detail.session.id}`);
      // Keep the events already paged in (the ledger lists them all).
      if (detail.events.length > d.events.length) d.events = detail.events;
      renderReview(d);
    } catch (e) { said.textContent = String(e.message || e); }
  } }, "Save review");
  // The form a reviewer may be typing in is kept across the live view's refreshes.
  const form = $("#review-form") || el("form", { id: "review-form", class: "filters" }, state, comment, send, said);
  box.replaceChildren(
    el("h2", {}, "Risk ", el("span", { id: "risk" }, riskBadge(detail.risk))),
    flags.length ? list : el("p", { class: "muted" }, "No detection rule matched."),
    // A rule that matched more often than the detail carries: said, with its count.
    ...(detail.flag_counts || []).filter((c) => c.count > flags.filter((f) => f.rule === c.rule).length).map((c) =>
      el("p", { class: "muted flags-more", "data-rule": c.rule },
        `${c.rule} (${c.severity}) matched ${c.count} times; the first ${flags.filter((f) => f.rule === c.rule).length} are listed and marked.`)),
    el("h2", {}, "What changed on the machine"),
    changes.length ? ledger : el("p", { class: "muted" }, "The change ledger recorded nothing."),
    el("h2", {}, "Review"), history, form);
}

async function sessionPage() {
  await header();
  const id = location.pathname.split("/").pop();
  const video = $("#video");
  let detail;
  try {
    detail = await apiJson(`/api/sessions/${id}`);
  } catch (e) {
    $("#meta").textContent = "";
    showError(e);
    return;
  }
  renderMeta(detail.session, detail.retention, detail);
  document.title = `${detail.session.user_name} on ${detail.session.hostname} · jitrec`;
  $("#export").href = `/api/sessions/${id}/export.mp4`;
  if (!detail.chunks.length) {
    showError("Nothing of this session has arrived yet.");
  }
  const player = new MsePlayer(video, detail);
  window.jitrecPlayer = player;

  // Timeline: the elevated user's own activity; the rest of the machine's (processes the
  // recorder judged not theirs) one click away.
  const list = $("#events");
  const showAll = $("#show-machine");
  let events = [];
  const renderEvents = () => {
    const flagsAt = new Map();
    for (const f of detail.flags || []) {
      const k = `${f.seq}/${f.idx}`;
      if (!flagsAt.has(k)) flagsAt.set(k, []);
      flagsAt.get(k).push(f);
    }
    const machine = (e) => e.kind === "process_start" && e.data && e.data.in_session === false;
    const hidden = detail.events.filter((e) => SHOWN.has(e.kind) && machine(e)).length;
    $("#machine-count").textContent = hidden ? `(${hidden})` : "";
    // A flagged event is always shown, whoever's it is.
    events = detail.events.filter((e) => SHOWN.has(e.kind)
      && (showAll.checked || !machine(e) || flagsAt.has(`${e.seq}/${e.idx}`)));
    list.replaceChildren(...events.map((e, i) => {
      const flags = flagsAt.get(`${e.seq}/${e.idx}`) || [];
      const li = el("li", {
        class: e.kind + (machine(e) ? " machine" : "") + (flags.length ? " flagged" : ""),
        "data-i": String(i), "data-media-us": String(e.media_us),
        onclick: () => { player.followLive = false; video.currentTime = e.media_us / 1e6; },
      }, el("span", { class: "t" }, clock(e.media_us / 1e6)), el("span", { class: "k" }, e.kind.replace("_", " ")), e.text);
      for (const f of flags) {
        li.append(el("span", { class: `flag-note ${f.severity}`, "data-rule": f.rule }, `${f.severity}: ${f.sentence}`));
      }
      return li;
    }));
  };
  showAll.addEventListener("change", renderEvents);
  renderEvents();
  renderReview(detail);
  // The detail call brings the first page of events; the rest come page by page behind it,
  // while the video plays (a session can hold more events than one answer should carry).
  let loading = false;
  const moreEvents = async () => {
    if (loading) return;
    loading = true;
    try {
      for (;;) {
        const last = detail.events[detail.events.length - 1];
        if (!last) return;
        const r = await apiJson(`/api/sessions/${id}/events?after_seq=${last.seq}&after_idx=${last.idx}`);
        if (!r.events.length) return;
        detail.events.push(...r.events);
        renderEvents();
        drawMarks(detail, player.end());
        // The ledger lists the change events of every page, not only the first.
        renderReview(detail);
        if (!r.more) return;
      }
    } catch (e) {
      showError(e);
    } finally {
      loading = false;
    }
  };
  if (detail.events_more) moreEvents();
  let current = -1;
  const highlight = () => {
    const us = video.currentTime * 1e6 + 1;
    let idx = -1;
    for (let i = 0; i < events.length && events[i].media_us <= us; i++) idx = i;
    if (idx === current) return;
    list.querySelector("li.current")?.classList.remove("current");
    current = idx;
    const li = list.children[idx];
    if (li) {
      li.classList.add("current");
      const box = list.parentElement;
      if (li.offsetTop < box.scrollTop || li.offsetTop > box.scrollTop + box.clientHeight - 30) {
        box.scrollTop = li.offsetTop - box.clientHeight / 3;
      }
    }
  };

  // Controls.
  const seek = $("#seek"), play = $("#play"), speed = $("#speed"), skip = $("#skip-idle");
  const duration = () => (isFinite(video.duration) && video.duration > 0 ? video.duration : player.end());
  const refresh = () => {
    seek.max = String(duration());
    if (!seek.matches(":active")) seek.value = String(video.currentTime);
    $("#clock").textContent = `${clock(video.currentTime)} / ${clock(duration())}`;
    play.textContent = video.paused ? "Play" : "Pause";
    highlight();
  };
  drawMarks(detail, player.end());
  const seekTo = (t) => { player.followLive = false; video.currentTime = t; };
  drawFilmstrip(detail, player.end(), seekTo);
  seek.addEventListener("input", () => { player.followLive = false; video.currentTime = Number(seek.value); });
  play.addEventListener("click", () => (video.paused ? video.play() : video.pause()));
  speed.addEventListener("change", () => { video.playbackRate = Number(speed.value); });
  video.addEventListener("timeupdate", () => {
    refresh();
    if (!skip.checked || video.paused) return;
    // Skip idle: a chunk with at most one frame is an unchanged screen.
    const us = video.currentTime * 1e6;
    const i = player.chunks.findIndex((c) => c.media_start_us <= us && us < c.media_end_us);
    if (i >= 0 && player.chunks[i].frames <= 1) {
      const next = player.chunks.slice(i + 1).find((c) => c.frames > 1);
      if (next) video.currentTime = next.media_start_us / 1e6;
    }
  });
  for (const ev of ["play", "pause", "seeked", "durationchange", "ratechange"]) video.addEventListener(ev, refresh);
  document.addEventListener("keydown", (ev) => {
    if (ev.target.matches("input, select, textarea")) return;
    const rates = [...speed.options].map((o) => Number(o.value));
    const step = (d) => {
      const i = Math.max(0, Math.min(rates.length - 1, rates.indexOf(video.playbackRate) + d));
      speed.value = String(rates[i]);
      video.playbackRate = rates[i];
    };
    const jump = (dir) => {
      const us = video.currentTime * 1e6;
      const e = dir > 0 ? events.find((x) => x.media_us > us + 1000) : [...events].reverse().find((x) => x.media_us < us - 500000);
      if (e) video.currentTime = e.media_us / 1e6;
    };
    const actions = {
      " ": () => (video.paused ? video.play() : video.pause()),
      ArrowLeft: () => { video.currentTime = Math.max(0, video.currentTime - 5); },
      ArrowRight: () => { video.currentTime = Math.min(duration(), video.currentTime + 5); },
      "+": () => step(1), "=": () => step(1), "-": () => step(-1),
      n: () => jump(1), p: () => jump(-1),
    };
    const a = actions[ev.key];
    if (a) { ev.preventDefault(); player.followLive = false; a(); }
  });

  // Start position: ?t=seconds (a search hit), else the beginning (or the live edge).
  const t = Number(new URLSearchParams(location.search).get("t"));
  if (t > 0) { player.followLive = false; video.currentTime = t; }

  // Live sessions: poll for new chunks and events until the close record arrives.
  if (!detail.session.closed) {
    $("#live").hidden = false;
    liveBadge(detail.session.status);
    const poll = async () => {
      try {
        const d = await apiJson(`/api/sessions/${id}`);
        // Keep the events already paged in beyond the detail's first page.
        const held = detail.events;
        detail = d;
        if (held.length > d.events.length) detail.events = held;
        if (d.events_more || held.length >= d.events.length) moreEvents();
        renderMeta(d.session, d.retention, d);
        player.addChunks(d.chunks, d.inits, d.session.closed);
        if (d.chunks.length) showError(null);
        renderEvents();
        renderReview(d);
        drawMarks(d, player.end());
        drawFilmstrip(d, player.end(), seekTo);
        liveBadge(d.session.status);
        if (d.session.closed) { $("#live").hidden = true; return; }
      } catch (e) { showError(e); }
      setTimeout(poll, POLL_MS);
    };
    setTimeout(poll, POLL_MS);
    video.play().catch(() => {});
  }

  // For tests and support: a snapshot of the player's state, and a pixel of the current frame.
  window.jitrecProbe = {
    state: () => ({
      currentTime: video.currentTime, paused: video.paused, rate: video.playbackRate,
      duration: duration(), readyState: video.readyState, error: player.error || (video.error && video.error.message) || null,
      chunks: player.chunks.length, appended: player.next, ended: player.ended,
      buffered: [...Array(player.sb ? player.sb.buffered.length : 0).keys()].map((i) => [player.sb.buffered.start(i), player.sb.buffered.end(i)]),
      current: current >= 0 ? events[current].media_us : null,
      live: !player.closed,
    }),
    pixel: (x, y) => {
      const c = document.createElement("canvas");
      c.width = video.videoWidth; c.height = video.videoHeight;
      const g = c.getContext("2d");
      g.drawImage(video, 0, 0);
      return [...g.getImageData(x, y, 1, 1).data.slice(0, 3)];
    },
  };
  refresh();
}

// ---- audit log ----------------------------------------------------------------------------

async function auditPage() {
  await header();
  // Pages of the log, newest first: "Older" asks for the records before the last one shown.
  let before = null;
  const more = $("#audit-more");
  const load = async () => {
    const q = before ? `?before=${encodeURIComponent(before)}` : "";
    const { entries, next_before } = await apiJson(`/api/audit${q}`);
    $("#audit tbody").append(...entries.map((e) => el("tr", { class: "entry" },
      el("td", {}, when(e.at)), el("td", {}, e.user), el("td", {}, e.action),
      el("td", {}, e.target), el("td", {}, e.detail))));
    before = next_before;
    more.hidden = !next_before;
  };
  more.addEventListener("click", () => load().catch(showError));
  try {
    await load();
  } catch (e) {
    showError(e);
  }
}

// ---- retention (admins) -------------------------------------------------------------------

async function retentionPage() {
  await header();
  const load = async () => {
    const r = await apiJson("/api/retention");
    $("#policies tbody").replaceChildren(...r.policies.map((p) => el("tr", { class: "policy" },
      el("td", {}, p.level), el("td", {}, p.name), el("td", {}, p.keep_days === null ? "forever" : `${p.keep_days} days`),
      el("td", {}, p.set_by), el("td", {}, el("button", { class: "link", onclick: async () => {
        await apiJson(`/api/retention/policies?level=${encodeURIComponent(p.level)}&name=${encodeURIComponent(p.name)}`, { method: "DELETE" }).catch(showError);
        load();
      } }, "Remove")))));
    $("#review tbody").replaceChildren(...r.awaiting_review.map((s) => {
      const note = el("input", { placeholder: "Why it may go", "aria-label": "Note" });
      return el("tr", { class: "review" },
        el("td", {}, el("a", { href: `/session/${s.session}` }, s.session)), el("td", {}, s.status),
        el("td", {}, note), el("td", {}, el("button", { class: "link", onclick: async () => {
          try {
            await apiJson(`/api/sessions/${s.session}/ack`, {
              method: "POST", headers: { "Content-Type": "application/json" },
              body: JSON.stringify({ note: note.value, status: s.status }),
            });
            showError(null);
          } catch (e) {
            showError(e);
          }
          load();
        } }, "Acknowledge")));
    }));
    const j = r.job;
    $("#job").textContent = !j ? "This player does not run the job on a schedule (serve --retention-every 0); run `jitrec-player retention run`."
      : `${j.runs} runs since the player started; last ${j.last_finished ? when(j.last_finished) : "not yet finished"}: ${j.last_outcome ?? "none yet"}`
        + (j.last_error ? `. Last error: ${j.last_error}` : "") + (j.panics ? ` (${j.panics} runs panicked)` : "");
    $("#job").className = j && j.last_error ? "error" : "muted";
    $("#holds tbody").replaceChildren(...r.holds.map((h) => el("tr", {},
      el("td", {}, el("a", { href: `/session/${h.session}` }, h.session)), el("td", {}, h.reason),
      el("td", {}, h.set_by), el("td", {}, when(h.set_at)), el("td", {}))));
    $("#deletions tbody").replaceChildren(...r.deletions.map((d) => el("tr", { class: "deletion" },
      el("td", {}, d.session), el("td", {}, d.state), el("td", {}, d.policy), el("td", {}, d.actor),
      el("td", {}, when(d.started_at)), el("td", {}, when(d.finished_at)), el("td", {}, String(d.objects)))));
  };
  $("#policy").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = ev.target.elements;
    const days = f.keep_days.value === "" ? null : Number(f.keep_days.value);
    try {
      await apiJson("/api/retention/policies", {
        method: "PUT", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ level: f.level.value, name: f.name.value, keep_days: days }),
      });
      showError(null);
      load();
    } catch (e) {
      showError(e);
    }
  });
  await load().catch(showError);
}

// ---- machines and their keys (admins) -------------------------------------------------------

async function machinesPage() {
  await header();
  const decide = async (action, k, why) => {
    try {
      await apiJson("/api/machines/decide", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ action, machine: k.machine_id, fingerprint: k.fingerprint, reason: why }),
      });
      showError(null);
    } catch (e) {
      showError(e);
    }
    load();
  };
  const load = async () => {
    const { keys } = await apiJson("/api/machines");
    $("#machines tbody").replaceChildren(...keys.map((k) => {
      const actions = el("td", {});
      const reason = el("input", { class: "reason", placeholder: "reason", "aria-label": "Reason" });
      const button = (action, label) => el("button", { class: "link", "data-action": action,
        onclick: () => decide(action, k, reason.value) }, label);
      if (k.state !== "revoked") actions.append(reason, " ");
      if (k.state === "pending") actions.append(button("approve", "Approve"), " ", button("replace", "Replace current key"), " ");
      if (k.state !== "revoked") actions.append(button("revoke", "Revoke"));
      return el("tr", { class: `machine-key ${k.state}`, "data-fingerprint": k.fingerprint },
        el("td", {}, k.machine_id), el("td", {}, k.hostname), el("td", { class: "mono" }, k.fingerprint),
        el("td", {}, el("span", { class: `badge ${k.state === "approved" ? "verified" : "unverified"}` }, k.state)),
        el("td", {}, `${when(k.first_seen)} (session ${k.first_session})`),
        el("td", {}, k.decided_by ? `${k.decided_by}${k.decided_at ? ", " + when(k.decided_at) : ""}${k.reason ? ": " + k.reason : ""}` : ""),
        actions);
    }));
  };
  await load().catch(showError);
}

const pages = { login: loginPage, list: listPage, session: sessionPage, audit: auditPage, retention: retentionPage, machines: machinesPage, review: reviewPage };
document.addEventListener("DOMContentLoaded", () => {
  const page = pages[document.body.dataset.page];
  if (page) page().catch(showError);
});
