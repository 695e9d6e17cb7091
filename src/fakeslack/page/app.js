// The local Slack page. Plain JavaScript, no build step. Every piece of text reaches the
// page through textContent or createTextNode, never innerHTML.
"use strict";

const state = { data: null, user: null, room: null, seen: {} };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function personName(id) {
  const p = state.data && state.data.people.find((x) => x.id === id);
  if (p) return p.name;
  if (state.data && id === state.data.bot.id) return state.data.bot.name;
  return id;
}

function channelName(id) {
  const c = state.data && state.data.channels.find((x) => x.id === id);
  return c ? c.name : id;
}

function groupHandle(id) {
  const g = state.data && state.data.groups.find((x) => x.id === id);
  return g ? g.handle : id;
}

// The emoji jitgate's messages use, and a few more; others stay as :name:.
const EMOJI = {
  arrows_counterclockwise: "\u{1F504}", bell: "\u{1F514}", hourglass: "\u231B",
  hourglass_flowing_sand: "\u23F3", information_source: "\u2139\uFE0F", key: "\u{1F511}",
  leftwards_arrow_with_hook: "\u21A9\uFE0F", lock: "\u{1F512}", unlock: "\u{1F513}",
  no_entry: "\u26D4", robot_face: "\u{1F916}", rotating_light: "\u{1F6A8}",
  warning: "\u26A0\uFE0F", white_check_mark: "\u2705", x: "\u274C", eyes: "\u{1F440}",
  heavy_check_mark: "\u2714\uFE0F", tada: "\u{1F389}", wave: "\u{1F44B}",
};

function emoji(s) {
  return s.replace(/:([a-z0-9_+-]+):/g, (m, name) => EMOJI[name] || m);
}

function decodeEntities(s) {
  return s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

// <…> tokens of Slack's mrkdwn: mentions, channels, user groups, special mentions,
// dates and links.
function specialToken(inner) {
  const [target, label] = splitOnce(inner, "|");
  if (target.startsWith("@")) return mention("@" + (label || personName(target.slice(1))));
  if (target.startsWith("#")) return mention("#" + (label || channelName(target.slice(1))));
  if (target.startsWith("!subteam^")) return mention("@" + (label || groupHandle(target.slice(9))).replace(/^@/, ""));
  if (target.startsWith("!date^")) {
    const parts = target.split("^");
    const secs = Number(parts[1]);
    return document.createTextNode(label || (Number.isFinite(secs) ? new Date(secs * 1000).toLocaleString() : ""));
  }
  if (target.startsWith("!")) return mention("@" + (label || target.slice(1)));
  const url = decodeEntities(target);
  const text = decodeEntities(label || target);
  if (/^(https?:|mailto:)/i.test(url)) {
    const a = el("a", null, text);
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }
  return document.createTextNode(text);
}

function splitOnce(s, sep) {
  const i = s.indexOf(sep);
  return i < 0 ? [s, ""] : [s.slice(0, i), s.slice(i + 1)];
}

function mention(text) {
  return el("span", "mention", text);
}

// A mrkdwn string → DOM. Formatting markers may wrap mentions and links
// (`*<@U1>*`): tokens are resolved inside each formatted stretch.
function mrkdwn(text) {
  const root = el("div", "mrkdwn");
  const parts = String(text).split(/```/);
  parts.forEach((part, i) => {
    if (i % 2 === 1) {
      root.appendChild(el("pre", null, decodeEntities(part.replace(/^\n/, ""))));
      return;
    }
    formatted(part, root);
  });
  return root;
}

function formatted(text, into) {
  const re = /\*([^*\n]+)\*|(^|[^\w])_([^_\n]+)_(?!\w)|~([^~\n]+)~|`([^`\n]+)`/g;
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    let before = text.slice(last, m.index);
    if (m[3] !== undefined) before += m[2];
    tokens(before, into);
    let wrap;
    let inner;
    if (m[1] !== undefined) { wrap = el("b"); inner = m[1]; }
    else if (m[3] !== undefined) { wrap = el("i"); inner = m[3]; }
    else if (m[4] !== undefined) { wrap = el("s"); inner = m[4]; }
    else { into.appendChild(el("code", null, decodeEntities(m[5]))); last = re.lastIndex; continue; }
    tokens(inner, wrap);
    into.appendChild(wrap);
    last = re.lastIndex;
  }
  tokens(text.slice(last), into);
}

function tokens(text, into) {
  const re = /<([^<>\n]+)>/g;
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    into.appendChild(document.createTextNode(emoji(decodeEntities(text.slice(last, m.index)))));
    into.appendChild(specialToken(m[1]));
    last = re.lastIndex;
  }
  into.appendChild(document.createTextNode(emoji(decodeEntities(text.slice(last)))));
}

function textObject(t) {
  if (!t) return document.createTextNode("");
  if (t.type === "mrkdwn") return mrkdwn(t.text || "");
  const span = el("span", "plain", t.emoji === false ? t.text || "" : emoji(t.text || ""));
  span.style.whiteSpace = "pre-wrap";
  return span;
}

function button(b, where, blockId) {
  const btn = el("button", "btn" + (b.style ? " " + b.style : ""), b.text ? emoji(b.text.text || "") : "");
  btn.type = "button";
  btn.dataset.actionId = b.action_id || "";
  btn.dataset.blockId = blockId;
  btn.addEventListener("click", () => {
    const go = () => click(where, blockId, b.action_id || "", btn);
    if (b.confirm) confirmDialog(b.confirm, go);
    else go();
  });
  return btn;
}

function renderBlocks(blocks, where) {
  const out = el("div", "blocks");
  (blocks || []).forEach((b, i) => {
    const blockId = b.block_id || "b" + i;
    let node;
    switch (b.type) {
      case "header":
        node = el("div", "block block-header", b.text ? emoji(b.text.text || "") : "");
        break;
      case "section": {
        node = el("div", "block block-section");
        const main = el("div", "section-main");
        if (b.text) main.appendChild(textObject(b.text));
        if (b.fields && b.fields.length) {
          const f = el("div", "fields");
          b.fields.forEach((x) => f.appendChild(textObject(x)));
          main.appendChild(f);
        }
        node.appendChild(main);
        if (b.accessory && b.accessory.type === "button") node.appendChild(button(b.accessory, where, blockId));
        break;
      }
      case "context":
        node = el("div", "block block-context");
        (b.elements || []).forEach((x) => {
          if (x.type === "image") node.appendChild(el("span", null, x.alt_text || ""));
          else node.appendChild(textObject(x));
        });
        break;
      case "divider":
        node = el("hr", "block block-divider");
        break;
      case "actions":
        node = el("div", "block block-actions");
        (b.elements || []).forEach((x) => {
          if (x.type === "button") node.appendChild(button(x, where, blockId));
          else node.appendChild(el("span", "unsupported", "[" + x.type + "]"));
        });
        break;
      case "image":
        node = el("div", "block unsupported", "[image: " + (b.alt_text || "") + "]");
        break;
      case "input":
        node = renderInput(b, blockId, i, where);
        break;
      default:
        node = el("div", "block unsupported", "[" + b.type + " block]");
    }
    node.dataset.blockId = blockId;
    out.appendChild(node);
  });
  return out;
}

function confirmDialog(c, go) {
  const back = document.getElementById("dialog-backdrop");
  document.getElementById("dialog-title").textContent = c.title ? c.title.text : "Are you sure?";
  const text = document.getElementById("dialog-text");
  text.replaceChildren(textObject(c.text));
  const yes = document.getElementById("dialog-confirm");
  const no = document.getElementById("dialog-deny");
  yes.textContent = c.confirm ? c.confirm.text : "Yes";
  no.textContent = c.deny ? c.deny.text : "Cancel";
  yes.className = "btn " + (c.style === "danger" ? "danger" : "primary");
  const close = () => { back.hidden = true; yes.onclick = null; no.onclick = null; };
  yes.onclick = () => { close(); go(); };
  no.onclick = close;
  back.hidden = false;
}

async function api(path, body) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!res.ok) {
    let msg = "HTTP " + res.status;
    try { msg = (await res.json()).error || msg; } catch (_) { /* not JSON */ }
    showError(msg);
  }
  await refresh();
}

function showError(msg) {
  let bar = document.getElementById("error-bar");
  if (!bar) {
    bar = el("div");
    bar.id = "error-bar";
    document.getElementById("main").prepend(bar);
  }
  bar.textContent = msg;
}

function click(where, blockId, actionId, btn) {
  btn.disabled = true;
  const body = { user: state.user, block_id: blockId, action_id: actionId };
  if (where.channel) { body.channel = where.channel; body.ts = where.ts; }
  if (where.view_id) { body.view_id = where.view_id; body.values = modalValues().values; }
  api("/api/action", body).finally(() => { btn.disabled = false; });
}

// ---- modals ------------------------------------------------------------------------

function renderInput(b, blockId, i, where) {
  const node = el("div", "block block-input");
  const e = b.element || {};
  const actionId = e.action_id || "a" + i;
  const label = el("label", "input-label", b.label ? emoji(b.label.text || "") : "");
  if (b.optional) label.appendChild(el("span", "optional", " (optional)"));
  node.appendChild(label);
  let field;
  switch (e.type) {
    case "plain_text_input":
      field = el(e.multiline ? "textarea" : "input", "input-field");
      if (!e.multiline) field.type = "text";
      if (e.initial_value) field.value = e.initial_value;
      if (e.placeholder) field.placeholder = e.placeholder.text || "";
      if (e.max_length) field.maxLength = e.max_length;
      break;
    case "static_select": {
      field = el("select", "input-field");
      const none = el("option", null, e.placeholder ? e.placeholder.text : "Select an item");
      none.value = "";
      field.appendChild(none);
      (e.options || []).forEach((o) => field.appendChild(optionEl(o)));
      (e.option_groups || []).forEach((g) => {
        const group = el("optgroup");
        group.label = g.label ? g.label.text : "";
        (g.options || []).forEach((o) => group.appendChild(optionEl(o)));
        field.appendChild(group);
      });
      if (e.initial_option) field.value = e.initial_option.value;
      break;
    }
    case "radio_buttons":
      field = el("div", "input-field radios");
      (e.options || []).forEach((o) => {
        const row = el("label", "radio");
        const r = el("input");
        r.type = "radio";
        r.name = "radio-" + blockId;
        r.value = o.value;
        if (e.initial_option && e.initial_option.value === o.value) r.checked = true;
        row.appendChild(r);
        row.appendChild(textObject(o.text));
        if (o.description) row.appendChild(el("span", "hint", " " + (o.description.text || "")));
        field.appendChild(row);
      });
      break;
    default:
      field = el("div", "unsupported", "[" + e.type + " input]");
  }
  field.dataset.kind = e.type || "";
  field.dataset.actionId = actionId;
  if (b.dispatch_action && where && where.view_id && (e.type === "static_select" || e.type === "radio_buttons")) {
    // A choice here is sent to the app at once (block_actions), as on Slack.
    field.addEventListener("change", () => {
      const chosen = e.type === "static_select" ? field.value : (field.querySelector("input:checked") || {}).value;
      if (!chosen) return;
      api("/api/action", {
        user: state.user, view_id: where.view_id, block_id: blockId, action_id: actionId,
        selected: chosen, values: modalValues().values,
      });
    });
  }
  field.classList.add("input-element");
  node.appendChild(field);
  if (b.hint) node.appendChild(el("div", "hint", b.hint.text || ""));
  const err = el("div", "input-error");
  err.dataset.errorFor = blockId;
  node.appendChild(err);
  node.dataset.optional = b.optional ? "1" : "";
  return node;
}

function optionEl(o) {
  const opt = el("option", null, o.text ? o.text.text : o.value);
  opt.value = o.value;
  return opt;
}

// What the open modal's inputs hold: {values: {block_id: {action_id: {value|selected}}}}
// and the required inputs left empty.
function modalValues() {
  const values = {};
  const missing = [];
  document.querySelectorAll("#modal .block-input").forEach((node) => {
    const blockId = node.dataset.blockId;
    const field = node.querySelector(".input-element");
    if (!field) return;
    const kind = field.dataset.kind;
    let v = null;
    if (kind === "plain_text_input") v = { value: field.value };
    else if (kind === "static_select") v = { selected: field.value };
    else if (kind === "radio_buttons") {
      const r = field.querySelector("input:checked");
      v = { selected: r ? r.value : "" };
    }
    if (!v) return;
    values[blockId] = { [field.dataset.actionId]: v };
    if (!node.dataset.optional && !(v.value || v.selected)) missing.push(blockId);
  });
  return { values, missing };
}

function showFieldErrors(errors) {
  document.querySelectorAll("#modal .input-error").forEach((e) => {
    e.textContent = (errors && errors[e.dataset.errorFor]) || "";
  });
}

async function submitModal(view) {
  const { values, missing } = modalValues();
  if (missing.length) {
    // Slack checks required inputs itself before sending anything.
    const errors = {};
    missing.forEach((b) => { errors[b] = "Please complete this required field."; });
    showFieldErrors(errors);
    return;
  }
  showFieldErrors({});
  const btn = document.getElementById("modal-submit");
  btn.disabled = true;
  try {
    const res = await fetch("/api/view_submission", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: state.user, view_id: view.id, values }),
    });
    const answer = await res.json().catch(() => ({ ok: false, error: "HTTP " + res.status }));
    if (answer.errors) showFieldErrors(answer.errors);
    const bar = document.getElementById("modal-error");
    bar.textContent = answer.ok === false ? "We had some trouble connecting: " + (answer.error || "") : "";
  } finally {
    btn.disabled = false;
  }
  await refresh();
}

function closeModal(view) {
  api("/api/view_closed", { user: state.user, view_id: view.id });
}

function renderModal() {
  const stack = (state.data && state.data.modals) || [];
  let back = document.getElementById("modal-backdrop");
  if (!stack.length) {
    if (back) back.remove();
    state.modalKey = null;
    return;
  }
  const view = stack[stack.length - 1];
  const key = state.user + "/" + view.id + "/" + (view.hash || "") + "/" + stack.length;
  if (back && state.modalKey === key) return; // keep what is typed
  // An update of the same view keeps what was typed in inputs it still has, as on Slack.
  const kept = back && back.querySelector("#modal").dataset.viewId === (view.id || "") ? modalValues().values : {};
  state.modalKey = key;
  if (back) back.remove();
  back = el("div");
  back.id = "modal-backdrop";
  const m = el("div");
  m.id = "modal";
  m.setAttribute("role", "dialog");
  m.dataset.viewId = view.id || "";
  m.dataset.callbackId = view.callback_id || "";
  const head = el("header", "modal-head");
  head.appendChild(el("h2", null, view.title ? emoji(view.title.text || "") : ""));
  const x = el("button", "modal-x", "\u00D7");
  x.type = "button";
  x.setAttribute("aria-label", "Close");
  x.addEventListener("click", () => closeModal(view));
  head.appendChild(x);
  m.appendChild(head);
  const err = el("div");
  err.id = "modal-error";
  m.appendChild(err);
  const body = el("div");
  body.id = "modal-body";
  body.appendChild(renderBlocks(view.blocks || [], { view_id: view.id }));
  m.appendChild(body);
  const foot = el("footer", "modal-foot");
  const close = el("button", "btn", view.close ? view.close.text : "Cancel");
  close.type = "button";
  close.id = "modal-close";
  close.addEventListener("click", () => closeModal(view));
  foot.appendChild(close);
  if (view.submit) {
    const submit = el("button", "btn primary", view.submit.text);
    submit.type = "button";
    submit.id = "modal-submit";
    submit.addEventListener("click", () => submitModal(view));
    foot.appendChild(submit);
  }
  m.appendChild(foot);
  back.appendChild(m);
  document.body.appendChild(back);
  restoreValues(kept);
}

function restoreValues(kept) {
  document.querySelectorAll("#modal .block-input").forEach((node) => {
    const field = node.querySelector(".input-element");
    const v = field && kept[node.dataset.blockId] && kept[node.dataset.blockId][field.dataset.actionId];
    if (!v) return;
    if (field.dataset.kind === "plain_text_input" && v.value) field.value = v.value;
    if (field.dataset.kind === "static_select" && v.selected && [...field.options].some((o) => o.value === v.selected)) {
      field.value = v.selected;
    }
    if (field.dataset.kind === "radio_buttons" && v.selected) {
      field.querySelectorAll("input").forEach((r) => { r.checked = r.value === v.selected; });
    }
  });
}

function initials(name) {
  return name.split(/\s+/).map((w) => w[0] || "").join("").slice(0, 2).toUpperCase();
}

function renderMessage(m) {
  const row = el("div", "message" + (m.only_for ? " ephemeral" : ""));
  row.dataset.ts = m.ts;
  row.dataset.channel = m.channel;
  const isBot = m.user === state.data.bot.id || m.user === "USLACKBOT";
  const author = m.user === "USLACKBOT" ? "Slackbot" : personName(m.user);
  row.appendChild(el("div", "avatar" + (isBot ? " bot" : ""), initials(author)));
  const body = el("div", "body");
  const meta = el("div", "meta");
  meta.appendChild(el("span", "author", author));
  if (isBot) meta.appendChild(el("span", "app-tag", "APP"));
  meta.appendChild(el("span", "time", new Date(m.at).toLocaleTimeString()));
  if (m.edited) meta.appendChild(el("span", "edited", " (edited)"));
  body.appendChild(meta);
  if (m.only_for) body.appendChild(el("div", "only-you", "Only visible to you"));
  if (m.command) body.appendChild(el("div", "typed", m.command));
  if (Array.isArray(m.blocks) && m.blocks.length) {
    body.appendChild(renderBlocks(m.blocks, { channel: m.channel, ts: m.ts }));
  } else {
    body.appendChild(mrkdwn(m.text || ""));
  }
  row.appendChild(body);
  return row;
}

function li(id, label, count) {
  const item = el("li", state.room === id ? "active" : "", label);
  item.dataset.room = id;
  if (count) item.appendChild(el("span", "badge", String(count)));
  item.addEventListener("click", () => openRoom(id));
  return item;
}

function openRoom(id) {
  state.room = id;
  if (id === "home") api("/api/home_opened", { user: state.user });
  render();
}

function unread(channel) {
  const list = state.data.messages.filter((m) => m.channel === channel);
  const seen = state.seen[state.user + channel] || 0;
  return state.room === channel ? 0 : Math.max(0, list.length - seen);
}

function render() {
  const d = state.data;
  if (!d) return;
  renderModal();
  const sel = document.getElementById("acting-as");
  if (sel.options.length !== d.people.length) {
    sel.replaceChildren();
    d.people.forEach((p) => {
      const o = el("option", null, p.name + (p.title ? " — " + p.title : ""));
      o.value = p.id;
      sel.appendChild(o);
    });
  }
  sel.value = state.user;
  if (!state.room) state.room = d.channels.length ? d.channels[0].id : "home";
  document.getElementById("apps").replaceChildren(li("home", "jitgate (Home)"));
  document.getElementById("channels").replaceChildren(...d.channels.map((c) => li(c.id, "# " + c.name, unread(c.id))));
  document.getElementById("dms").replaceChildren(li(d.dm, "jitgate", unread(d.dm)));
  const box = document.getElementById("messages");
  const title = document.getElementById("room-title");
  const composer = document.getElementById("composer");
  if (state.room === "home") {
    title.textContent = "jitgate — Home";
    composer.hidden = true;
    const home = el("div", "home");
    home.id = "home";
    if (d.home && Array.isArray(d.home.blocks)) home.appendChild(renderBlocks(d.home.blocks, { home: true }));
    else home.appendChild(el("div", "empty", "jitgate has not published a Home tab for you yet."));
    box.replaceChildren(home);
    return;
  }
  composer.hidden = false;
  title.textContent = state.room === d.dm ? "jitgate" : "# " + channelName(state.room);
  const list = d.messages.filter((m) => m.channel === state.room);
  state.seen[state.user + state.room] = list.length;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  if (list.length) box.replaceChildren(...list.map(renderMessage));
  else box.replaceChildren(el("div", "empty", "No messages yet. Type " + d.command + " help below."));
  if (atBottom || list.length) box.scrollTop = box.scrollHeight;
}

async function refresh() {
  const res = await fetch("/api/state?user=" + encodeURIComponent(state.user));
  if (!res.ok) { showError("cannot load the workspace: HTTP " + res.status); return; }
  state.data = await res.json();
  document.body.dataset.version = String(state.data.version);
  render();
}

async function start() {
  const params = new URLSearchParams(location.search);
  const res = await fetch("/api/people");
  if (!res.ok) { showError("cannot load the workspace: HTTP " + res.status); return; }
  const people = await res.json();
  const wanted = params.get("as");
  state.user = people.some((p) => p.id === wanted) ? wanted : people[0].id;
  if (params.get("room")) state.room = params.get("room");
  await refresh();
  document.getElementById("acting-as").addEventListener("change", (e) => {
    state.user = e.target.value;
    if (state.room && state.room.startsWith("D")) state.room = null;
    refresh().then(() => { if (state.room === "home") openRoom("home"); });
  });
  document.getElementById("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("composer-input");
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    api("/api/command", { user: state.user, channel: state.room, text });
  });
  const menuButton = document.getElementById("shortcuts-button");
  const menu = document.getElementById("shortcuts-menu");
  menuButton.addEventListener("click", () => {
    menu.replaceChildren(...(state.data.shortcuts || []).map((sc) => {
      const item = el("button", "shortcut", sc.name);
      item.type = "button";
      item.dataset.callbackId = sc.callback_id;
      item.addEventListener("click", () => {
        menu.hidden = true;
        api("/api/shortcut", { user: state.user, callback_id: sc.callback_id });
      });
      return item;
    }));
    if (!menu.children.length) menu.appendChild(el("div", "empty", "The app declares no shortcuts."));
    menu.hidden = !menu.hidden;
  });
  const events = new EventSource("/api/events");
  const live = document.getElementById("live");
  events.onopen = () => live.classList.add("on");
  events.onerror = () => live.classList.remove("on");
  events.addEventListener("changed", () => refresh());
}

document.addEventListener("DOMContentLoaded", start);
