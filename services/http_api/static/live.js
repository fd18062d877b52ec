"use strict";
// The live-captions page: microphone -> AudioWorklet (16-bit PCM) -> /v1/realtime (OpenAI's Realtime
// protocol, transcription session) -> interim text (grey, from deltas) that turns final (black, from
// completed). Plain DOM and textContent only: nothing from the server is parsed as markup.
const $ = (id) => document.getElementById(id);
const RATE = 16000; // asked of the AudioContext; the session uses whatever rate the browser gives
const SPEAKER_COLOURS = ["#1f6feb", "#c2410c", "#15803d", "#9333ea", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

const state = { ws: null, ctx: null, stream: null, node: null, running: false, stopping: false, items: new Map(), order: [] };

function status(text, kind) {
  const el = $("status");
  el.textContent = text;
  el.className = kind || "";
}

function token() { return $("token").value.trim(); }
function authHeaders() { return token() ? { Authorization: `Bearer ${token()}` } : {}; }

function clock(ms) {
  const s = Math.max(0, ms) / 1000;
  const m = Math.floor(s / 60);
  return `${String(m).padStart(2, "0")}:${(s - m * 60).toFixed(1).padStart(4, "0")}`;
}

function stamp(ms, comma) {
  const t = Math.max(0, Math.round(ms));
  const h = Math.floor(t / 3600000), m = Math.floor(t / 60000) % 60, s = Math.floor(t / 1000) % 60, r = t % 1000;
  const p = (n, w) => String(n).padStart(w, "0");
  return `${p(h, 2)}:${p(m, 2)}:${p(s, 2)}${comma ? "," : "."}${p(r, 3)}`;
}

function speakerColour(label) {
  let h = 0;
  for (const c of String(label)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return SPEAKER_COLOURS[h % SPEAKER_COLOURS.length];
}

function item(id, startMs) {
  let it = state.items.get(id);
  if (!it) {
    it = { id, start: startMs ?? 0, end: null, text: "", final: false, segments: [] };
    const line = document.createElement("div");
    line.className = "line interim";
    line.dataset.item = id;
    const time = document.createElement("span");
    time.className = "time";
    const text = document.createElement("span");
    text.className = "text";
    line.append(time, text);
    $("captions").appendChild(line);
    it.line = line;
    state.items.set(id, it);
    state.order.push(id);
  }
  return it;
}

function render(it) {
  const [time, text] = it.line.children;
  time.textContent = clock(it.start);
  text.replaceChildren();
  if (it.final && it.segments.length) {
    for (const seg of it.segments) {
      const label = document.createElement("span");
      label.className = "speaker";
      label.style.color = speakerColour(seg.speaker);
      label.textContent = `Speaker ${seg.speaker}:`;
      text.append(label, document.createTextNode(seg.text + " "));
    }
  } else {
    text.textContent = it.text;
  }
  it.line.className = `line ${it.final ? "final" : "interim"}`;
  const box = $("captions");
  box.scrollTop = box.scrollHeight;
  const any = state.order.some((id) => state.items.get(id).final);
  for (const b of ["copy", "txt", "srt", "vtt", "clear"]) $(b).disabled = !any;
}

function onEvent(e) {
  switch (e.type) {
    case "session.created":
    case "session.updated":
      break;
    case "input_audio_buffer.speech_started":
      render(item(e.item_id, e.audio_start_ms));
      break;
    case "input_audio_buffer.speech_stopped":
      item(e.item_id).end = e.audio_end_ms;
      break;
    case "conversation.item.input_audio_transcription.delta": {
      const it = item(e.item_id);
      it.text += e.delta || "";
      render(it);
      break;
    }
    case "conversation.item.input_audio_transcription.segment":
      item(e.item_id).segments.push({ speaker: e.speaker, text: e.text });
      break;
    case "conversation.item.input_audio_transcription.completed": {
      const it = item(e.item_id);
      it.text = e.transcript || "";
      it.final = true;
      if (!it.text && !it.segments.length) {
        it.line.remove(); // speech without words (a cough): nothing to show
        state.items.delete(it.id);
        state.order = state.order.filter((id) => id !== it.id);
        break;
      }
      render(it);
      break;
    }
    case "error": {
      const err = e.error || {};
      if (["invalid_token", "missing_token", "invalid_api_key"].includes(err.code)) {
        status("The server refused the token: enter a valid one (AUTH_TOKENS on the server) and press Start.", "error");
      } else {
        status(`Error from the server: ${err.message || err.code}`, "error");
      }
      break;
    }
  }
}

async function loadOptions() {
  try {
    const r = await fetch("/live/api/config", { headers: authHeaders(), cache: "no-store" });
    if (r.ok) {
      const c = await r.json();
      const sel = $("language");
      for (const code of c.languages || []) {
        const o = document.createElement("option");
        o.value = o.textContent = code;
        sel.appendChild(o);
      }
      if ((c.languages || []).length === 1) sel.value = c.languages[0];
    }
    const m = await fetch("/v1/models", { headers: authHeaders(), cache: "no-store" });
    if (m.ok) {
      const models = ((await m.json()).data || []).map((d) => d.id);
      const sel = $("model");
      sel.replaceChildren();
      for (const id of models) {
        const o = document.createElement("option");
        o.value = o.textContent = id;
        sel.appendChild(o);
      }
      $("model-label").hidden = models.length < 2; // one model: nothing to choose
    } else if (m.status === 401) {
      status("This server needs a token: enter it, then press Start.");
    }
  } catch (err) {
    status(`Cannot reach the server: ${err}`, "error");
  }
}

function sessionUpdate(rate) {
  const transcription = {};
  if ($("language").value) transcription.language = $("language").value;
  if (!$("model-label").hidden && $("model").value) transcription.model = $("model").value;
  return {
    type: "session.update",
    session: {
      type: "transcription",
      audio: {
        input: {
          format: { type: "audio/pcm", rate },
          transcription,
          turn_detection: { type: "server_vad", threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 },
        },
      },
    },
  };
}

function base64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

async function start() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    status("This page cannot use the microphone here: browsers allow it only over https (or on localhost).", "error");
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true } });
  } catch (err) {
    if (err && (err.name === "NotAllowedError" || err.name === "SecurityError")) {
      status("Microphone access was refused. Allow it in the browser's site settings (the icon left of the address), then press Start again.", "error");
    } else if (err && err.name === "NotFoundError") {
      status("No microphone was found: connect one and press Start again.", "error");
    } else {
      status(`The microphone could not be opened: ${err && err.message ? err.message : err}`, "error");
    }
    return;
  }
  try {
    state.ctx = new AudioContext({ sampleRate: RATE });
  } catch (_) {
    state.ctx = new AudioContext(); // a browser that cannot resample: send its own rate
  }
  const rate = state.ctx.sampleRate;
  await state.ctx.audioWorklet.addModule("/live/pcm-worklet.js");
  const source = state.ctx.createMediaStreamSource(state.stream);
  state.node = new AudioWorkletNode(state.ctx, "pcm-writer");
  source.connect(state.node);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const protocols = ["realtime"];
  if (token()) protocols.push(`openai-insecure-api-key.${token()}`);
  const ws = new WebSocket(`${scheme}://${location.host}/v1/realtime?intent=transcription`, protocols);
  state.ws = ws;
  state.running = true;
  state.stopping = false;
  $("start").textContent = "Stop";
  $("start").classList.add("running");
  status("Connecting…");
  ws.onopen = () => {
    ws.send(JSON.stringify(sessionUpdate(rate)));
    status("Listening…", "live");
    state.node.port.onmessage = (m) => {
      if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "input_audio_buffer.append", audio: base64(m.data) }));
    };
  };
  ws.onmessage = (m) => {
    try {
      onEvent(JSON.parse(m.data));
    } catch (err) {
      console.error(err);
    }
  };
  ws.onclose = (e) => {
    const wasStopping = state.stopping;
    teardown();
    if (wasStopping) {
      status("Stopped. Copy or download the transcript below.");
    } else if ($("status").className !== "error") {
      status(`The connection to the server closed (code ${e.code}${e.reason ? ": " + e.reason : ""}). Press Start to go on.`, "error");
    }
  };
}

function teardown() {
  state.running = false;
  if (state.node) state.node.port.onmessage = null;
  if (state.stream) for (const t of state.stream.getTracks()) t.stop();
  if (state.ctx) state.ctx.close().catch(() => {});
  state.stream = state.ctx = state.node = null;
  $("start").textContent = "Start";
  $("start").classList.remove("running");
}

function stop() {
  const ws = state.ws;
  state.stopping = true;
  if (state.node) state.node.port.onmessage = null;
  if (state.stream) for (const t of state.stream.getTracks()) t.stop();
  if (ws && ws.readyState === WebSocket.OPEN) {
    // The open utterance becomes final; the socket closes once it is (or after 3 s).
    ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));
    status("Finishing…");
    const open = () => state.order.some((id) => !state.items.get(id).final);
    const started = Date.now();
    const wait = setInterval(() => {
      if (!open() || Date.now() - started > 3000) {
        clearInterval(wait);
        ws.close(1000);
      }
    }, 100);
  } else {
    teardown();
  }
}

function finals() {
  return state.order.map((id) => state.items.get(id)).filter((it) => it.final && it.text);
}

function asText() {
  return finals().map((it) => `[${clock(it.start)}] ${it.text}`).join("\n") + "\n";
}

function cueText(it) {
  return it.segments.length ? it.segments.map((s) => `Speaker ${s.speaker}: ${s.text}`).join(" ") : it.text;
}

function asSrt() {
  return finals().map((it, i) => `${i + 1}\n${stamp(it.start, true)} --> ${stamp(it.end ?? it.start + 2000, true)}\n${cueText(it)}\n`).join("\n");
}

function asVtt() {
  const cues = finals().map((it) => {
    const text = it.segments.length ? it.segments.map((s) => `<v Speaker ${s.speaker}>${s.text}`).join(" ") : it.text;
    return `${stamp(it.start, false)} --> ${stamp(it.end ?? it.start + 2000, false)}\n${text}\n`;
  });
  return ["WEBVTT", "", ...cues].join("\n");
}

function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

$("start").onclick = () => (state.running ? stop() : start().catch((err) => { teardown(); status(`Could not start: ${err}`, "error"); }));
$("copy").onclick = async () => {
  try {
    await navigator.clipboard.writeText(asText());
    status("Copied.");
  } catch (_) {
    status("The browser would not copy: use Download .txt instead.", "error");
  }
};
$("txt").onclick = () => download("captions.txt", asText(), "text/plain");
$("srt").onclick = () => download("captions.srt", asSrt(), "application/x-subrip");
$("vtt").onclick = () => download("captions.vtt", asVtt(), "text/vtt");
$("clear").onclick = () => {
  state.items.clear();
  state.order = [];
  $("captions").replaceChildren();
  for (const b of ["copy", "txt", "srt", "vtt", "clear"]) $(b).disabled = true;
};
$("token").value = sessionStorage.getItem("scribe-token") || "";
$("token").onchange = () => { sessionStorage.setItem("scribe-token", token()); loadOptions(); };
window.scribeLive = { asText, asSrt, asVtt }; // for tests and the browser console
loadOptions();
