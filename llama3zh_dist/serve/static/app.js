// The web chat: plain JavaScript, no build step, nothing loaded from elsewhere.
// Single mode streams /v1/chat/completions; compare mode asks /api/match for an A/B match, streams
// both sides at once, and reveals the model names only after the vote (/api/vote).
"use strict";

const $ = (id) => document.getElementById(id);
let page = null;          // /api/page
let messages = [];        // the conversation (without the system prompt)
let busy = false;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value || sessionStorage.getItem("llama3zh_key") || "";
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function status(text, isError) {
  $("status").textContent = text || "";
  $("status").className = isError ? "error" : "";
}

function settings() {
  const stop = $("stop").value.split("\n").filter((s) => s.length > 0);
  const s = {
    temperature: parseFloat($("temperature").value),
    top_p: parseFloat($("top_p").value),
    max_tokens: parseInt($("max_tokens").value, 10),
  };
  if (stop.length) s.stop = stop;
  return s;
}

function conversation() {
  const sys = $("system").value.trim();
  return (sys ? [{ role: "system", content: sys }] : []).concat(messages);
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;
  $("log").appendChild(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

// POST and read OpenAI SSE chunks; onText(piece) per content delta. Resolves {text, finish}.
async function stream(url, body, onText) {
  const resp = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!resp.ok) {
    let msg = resp.status + "";
    try { msg += " " + (await resp.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  const reader = resp.body.getReader();
  const decoder = new TextDecoder("utf-8");  // {stream: true} keeps a character split across reads whole
  let buf = "", text = "", finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const data = event.slice(6);
      if (data === "[DONE]") return { text, finish };
      const obj = JSON.parse(data);
      if (obj.error) throw new Error(obj.error.message);
      for (const c of obj.choices || []) {
        if (c.delta && c.delta.content) { text += c.delta.content; onText(c.delta.content); }
        if (c.finish_reason) finish = c.finish_reason;
      }
    }
  }
  return { text, finish };
}

async function sendSingle(userText) {
  messages.push({ role: "user", content: userText });
  bubble("user", userText);
  const div = bubble("assistant", "");
  const body = Object.assign({ model: page.default_model, messages: conversation(), stream: true }, settings());
  try {
    const out = await stream("/v1/chat/completions", body, (t) => { div.textContent += t; $("log").scrollTop = $("log").scrollHeight; });
    messages.push({ role: "assistant", content: out.text });
    div.dataset.done = "1";
    div.dataset.finish = out.finish || "";
    status(out.finish === "length" ? "stopped at max_tokens" : "");
  } catch (e) {
    messages.pop();
    div.remove();
    status("error: " + e.message, true);
  }
}

async function sendCompare(userText) {
  messages.push({ role: "user", content: userText });
  bubble("user", userText);
  const body = Object.assign({ messages: conversation() }, settings());
  let match;
  try {
    const r = await fetch("/api/match", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    match = await r.json();
    if (!r.ok) throw new Error(match.error.message);
  } catch (e) {
    messages.pop();
    status("error: " + e.message, true);
    return;
  }
  const pair = document.createElement("div");
  pair.className = "pair";
  const sides = {};
  for (const side of ["a", "b"]) {
    const box = document.createElement("div");
    box.className = "side";
    box.innerHTML = "<h4>Model " + side.toUpperCase() + "</h4><div class='answer'></div>";
    box.querySelector(".answer").dataset.side = side;
    pair.appendChild(box);
    sides[side] = box;
  }
  $("log").appendChild(pair);
  const run = (side) => stream("/api/match/" + match.match_id + "/" + side, {}, (t) => {
    sides[side].querySelector(".answer").textContent += t;
    $("log").scrollTop = $("log").scrollHeight;
  });
  let outs;
  try {
    outs = await Promise.all([run("a"), run("b")]);  // both streams at once
  } catch (e) {
    messages.pop();
    status("error: " + e.message, true);
    return;
  }
  pair.dataset.done = "1";
  const bar = document.createElement("div");
  bar.className = "votes";
  const labels = { a: "A 更好", b: "B 更好", tie: "平局 Tie", both_bad: "都不好 Both bad" };
  for (const v of Object.keys(labels)) {
    const btn = document.createElement("button");
    btn.type = "button"; btn.textContent = labels[v]; btn.dataset.vote = v;
    btn.onclick = () => vote(match.match_id, v, outs, sides, bar);
    bar.appendChild(btn);
  }
  $("log").appendChild(bar);
  $("log").scrollTop = $("log").scrollHeight;
  status("vote to continue");
}

async function vote(matchId, v, outs, sides, bar) {
  const r = await fetch("/api/vote", { method: "POST", headers: headers(), body: JSON.stringify({ match_id: matchId, vote: v }) });
  const res = await r.json();
  if (!r.ok) { status("error: " + res.error.message, true); return; }
  sides.a.querySelector("h4").textContent = "Model A: " + res.a;
  sides.b.querySelector("h4").textContent = "Model B: " + res.b;
  bar.textContent = "voted: " + v;
  bar.dataset.voted = v;
  // the conversation goes on with the preferred answer (A on a tie); a both-bad turn is dropped
  if (v === "both_bad") messages.pop();
  else messages.push({ role: "assistant", content: (v === "b" ? outs[1] : outs[0]).text });
  busy = false;
  status("");
}

async function send(ev) {
  if (ev) ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || busy) return;
  busy = true;
  $("input").value = "";
  $("send").disabled = true;
  try {
    if (page.compare) await sendCompare(text);
    else { await sendSingle(text); }
  } finally {
    // in compare mode the next turn waits for the vote on this one
    busy = page.compare && $("log").querySelector(".votes:not([data-voted])") !== null;
    $("send").disabled = false;
  }
}

function newConversation() {
  messages = [];
  busy = false;
  $("log").innerHTML = "";
  status("");
}

async function init() {
  page = await (await fetch("/api/page")).json();
  $("mode").textContent = page.compare ? "Compare mode: two models, names hidden until you vote" : "Chat";
  $("keybox").hidden = !page.key_required;
  $("max_tokens").value = Math.min(256, page.max_tokens);
  $("apikey").onchange = () => sessionStorage.setItem("llama3zh_key", $("apikey").value);
  $("temperature").oninput = () => { $("tval").textContent = $("temperature").value; };
  $("form").onsubmit = send;
  $("new").onclick = newConversation;
  $("input").onkeydown = (e) => { if (e.key === "Enter" && !e.shiftKey) send(e); };
  document.body.dataset.ready = "1";
}

init();
