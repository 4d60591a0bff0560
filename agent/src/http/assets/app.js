'use strict';

const H = 480;
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get('token') || '';
const q = '?token=' + encodeURIComponent(token);
let es = null, retryTimer = 0, lastState = null, lastAt = 0, dead = false;

// DOM builders: text goes in as text nodes only, so names can never inject markup.
function put(el, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) if (v != null && v !== false) el.setAttribute(k, v);
  for (const k of kids) if (k != null && k !== false) el.append(k instanceof Node ? k : String(k));
  return el;
}
const h = (tag, attrs, ...kids) => put(document.createElement(tag), attrs, kids);
const s = (tag, attrs, ...kids) => put(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, kids);

const arr = (v) => (Array.isArray(v) ? v : []);
const has = (v) => typeof v === 'number' && Number.isFinite(v);
const num = (v) => (has(v) ? v : 0);
const cls = (v) => String(v || 'unknown').replace(/[^a-z0-9_-]/gi, '');
const short = (id) => String(id || '').slice(0, 8);
const f1 = (n) => n.toFixed(1);
const byKey = (f) => (a, b) => (f(a) < f(b) ? -1 : f(a) > f(b) ? 1 : 0);
const plural = (n, w) => `${n} ${w}${n === 1 ? '' : 's'}`;
const pad = (n) => String(n).padStart(2, '0');
const DASH = '–';

// ---- formatting

const fmtRate = (n) => (num(n) >= 100 ? Math.round(n).toLocaleString('en') : f1(num(n)));
function fmtBytes(n) {
  n = num(n);
  let i = 0;
  for (; n >= 1024 && i < 4; i++) n /= 1024;
  return (i ? f1(n) : Math.round(n)) + ' ' + ['B', 'KiB', 'MiB', 'GiB', 'TiB'][i] + '/s';
}
const SPANS = [[864e5, 'd'], [36e5, 'h'], [6e4, 'min'], [1e3, 's']];
function fmtMs(ms, digits = 1) {
  if (!has(ms)) return DASH;
  if (ms < 1000) return Math.round(ms) + ' ms';
  const [d, u] = SPANS.find(([d]) => ms >= d);
  return (ms / d).toFixed(digits) + ' ' + u;
}
const fmtAgo = (at, now) => (!has(at) ? DASH : now - at < 1000 ? 'just now' : fmtMs(now - at, 0) + ' ago');
function fmtLag(a) {
  const parts = [has(a.lagOps) && plural(a.lagOps, 'op'), has(a.lagMs) && fmtMs(a.lagMs)].filter(Boolean);
  return parts.length ? parts.join(' · ') : DASH;
}

// Sums per-database link figures.
function agg(dbs) {
  const a = { opsIn: 0, opsOut: 0, bIn: 0, bOut: 0, lagOps: null, lagMs: null, last: null };
  const max = (k, v) => { if (has(v)) a[k] = Math.max(a[k] ?? 0, v); };
  for (const d of dbs) {
    a.opsIn += num(d.ops_in_per_s);
    a.opsOut += num(d.ops_out_per_s);
    a.bIn += num(d.bytes_in_per_s);
    a.bOut += num(d.bytes_out_per_s);
    max('lagOps', d.lag_ops);
    max('lagMs', d.lag_ms);
    max('last', d.last_sync_ms);
    a.sending ||= !!d.sending;
    a.taking ||= !!d.taking;
    a.e2e ||= !!d.e2e;
  }
  return a;
}

function normalize(st) {
  st = st && typeof st === 'object' ? st : {};
  const t = (st.topology && typeof st.topology === 'object' && st.topology) || {};
  const links = arr(t.links).filter((l) => l && l.device_id).map((l) => {
    const dbs = arr(l.databases).filter((d) => d && typeof d === 'object');
    return { ...l, device_id: String(l.device_id), databases: dbs, agg: agg(dbs) };
  }).sort(byKey((l) => l.device_id));
  // `via` may name the hub or give its id: show its name either way.
  for (const l of links) if (l.via) l.viaName = (links.find((x) => x.device_id === l.via) || {}).name || l.via;
  return { t, links, edges: arr(t.edges), dbs: arr(st.databases).filter((d) => d && d.name != null),
    agent: st.agent || {}, now: has(t.at_ms) ? t.at_ms : Date.now() };
}

// ---- status and header

function setStatus(kind, text) {
  $('status-dot').className = 'dot ' + kind;
  document.body.dataset.conn = kind;
  $('status').textContent = text;
}
function banner(...text) {
  $('banner').replaceChildren(...text);
  $('banner').hidden = !text.length;
}
function stop(status, what) {
  dead = true;
  if (es) es.close();
  clearTimeout(retryTimer);
  setStatus('error', status);
  banner(`This link's ${what}: run `, h('code', {}, 'blazectl dashboard'), ' for a fresh one.');
}
const badToken = () => stop('unauthorized', 'token is wrong');

function renderHeader(v) {
  const t = v.t, role = t.role === 'hub' ? 'hub' : 'device';
  $('dev-name').textContent = t.name || short(t.device_id) || 'BlazeDB';
  $('dev-role').textContent = role;
  $('dev-role').className = 'badge role-' + role;
  $('dev-mesh').textContent = t.mesh ? 'mesh ' + String(t.mesh).slice(0, 12) : 'no mesh';
  $('dev-mesh').title = t.mesh || '';
  $('dev-id').textContent = t.device_id ? short(t.device_id) + '…' : '';
  $('dev-id').title = t.device_id || '';
  document.title = (t.name ? t.name + ' · ' : '') + 'BlazeDB';
  const a = v.agent;
  $('agent').textContent = [a.agent, has(a.uptime_ms) && 'up ' + fmtMs(a.uptime_ms),
    has(a.connections) && plural(a.connections, 'connection'),
    has(a.subscriptions) && plural(a.subscriptions, 'subscription'),
    has(a.databases) && plural(a.databases, 'database'), a.device_id && 'device ' + a.device_id,
  ].filter(Boolean).join(' · ');
  if (a.store_failed) {
    banner('The store takes no writes, and sync stalls, until blazed restarts: ' + a.store_failed);
  }
}

// ---- tooltips

function dbLine(d) {
  return ['  ' + (d.db ?? '?') + ':', `in ${fmtRate(d.ops_in_per_s)} ops/s (${fmtBytes(d.bytes_in_per_s)}),`,
    `out ${fmtRate(d.ops_out_per_s)} ops/s (${fmtBytes(d.bytes_out_per_s)})`,
    (has(d.lag_ops) || has(d.lag_ms)) && '· lag ' + fmtLag({ lagOps: d.lag_ops, lagMs: d.lag_ms }),
    d.sending && '· sending', d.taking && '· taking', d.e2e && '· e2e'].filter(Boolean).join(' ');
}
function linkTip(l, now) {
  return [`${l.name || short(l.device_id)} (${l.role || 'device'}) · ${l.state || 'unknown'}`, l.device_id,
    l.via && 'via ' + l.viaName, l.address && 'address ' + l.address, has(l.rtt_ms) && 'rtt ' + f1(l.rtt_ms) + ' ms',
    l.error && 'error: ' + l.error, has(l.retry_in_ms) && 'retry in ' + fmtMs(l.retry_in_ms),
    has(l.agg.last) && 'last sync ' + fmtAgo(l.agg.last, now),
    l.databases.length && 'databases:', ...l.databases.map(dbLine)].filter(Boolean).join('\n');
}

// ---- graph

function layout(nodes, self, W) {
  const cx = W / 2, cy = H / 2 - 12, ry = H / 2 - 62;
  const rx = Math.min(W / 2 - (W < 700 ? 45 : 90), ry * 1.9);
  const all = nodes.slice().sort(byKey((n) => n.id));
  let centre = all.filter((n) => n.role === 'hub');
  if (!centre.length) centre = [self];
  const outer = all.filter((n) => !centre.includes(n));
  const rc = centre.length > 1 ? ry * 0.45 : 0;
  centre.forEach((n, i) => {
    const a = (2 * Math.PI * i) / centre.length - Math.PI / 4;
    n.x = cx + rc * 1.3 * Math.cos(a);
    n.y = cy + rc * Math.sin(a);
  });
  outer.forEach((n, i) => {
    const a = (2 * Math.PI * i) / outer.length - Math.PI / 2 + (rc ? 0 : Math.PI / 7);
    n.x = cx + rx * Math.cos(a);
    n.y = cy + ry * Math.sin(a);
  });
}

// A curve between two nodes, stopped short of their outlines, bent around
// any other node or node label it would otherwise run through.
function curve(a, b, padA, padB, obstacles) {
  const d = Math.hypot(b.x - a.x, b.y - a.y) || 1;
  const ux = (b.x - a.x) / d, uy = (b.y - a.y) / d;
  let k = 0;
  for (const o of obstacles) {
    if (o.n === a || o.n === b) continue;
    const t = (o.x - a.x) * ux + (o.y - a.y) * uy, side = (o.y - a.y) * ux - (o.x - a.x) * uy;
    const need = o.r + 12 - Math.abs(side);
    if (t <= 0 || t >= d || need <= 0) continue;
    const bend = Math.min(0.8 * d, need / (2 * (t / d) * (1 - t / d)));
    if (bend > Math.abs(k)) k = side > 0 ? -bend : bend;
  }
  const cx = (a.x + b.x) / 2 - uy * k, cy = (a.y + b.y) / 2 + ux * k;
  const da = Math.hypot(cx - a.x, cy - a.y) || 1, db = Math.hypot(cx - b.x, cy - b.y) || 1;
  const p = { x1: a.x + ((cx - a.x) / da) * padA, y1: a.y + ((cy - a.y) / da) * padA,
    x2: b.x + ((cx - b.x) / db) * padB, y2: b.y + ((cy - b.y) / db) * padB, cx, cy };
  p.d = `M${f1(p.x1)},${f1(p.y1)} Q${f1(cx)},${f1(cy)} ${f1(p.x2)},${f1(p.y2)}`;
  return p;
}

// Where along a curve a w×h box fits without covering a node or another
// label: the middle first, above the curve (below if flip), then further out.
function place(p, w, h, gap, boxes, flip) {
  let first = null;
  for (const t of [0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78]) {
    const u = 1 - t;
    const x = u * u * p.x1 + 2 * u * t * p.cx + t * t * p.x2, y = u * u * p.y1 + 2 * u * t * p.cy + t * t * p.y2;
    const tx = u * (p.cx - p.x1) + t * (p.x2 - p.cx), ty = u * (p.cy - p.y1) + t * (p.y2 - p.cy);
    const l = Math.hypot(tx, ty) || 1;
    let nx = ty / l, ny = -tx / l;
    if (ny > 0 || (ny === 0 && nx > 0)) { nx = -nx; ny = -ny; }
    const off = gap + (w / 2) * Math.abs(nx) + (h / 2) * Math.abs(ny);
    for (const side of flip ? [-1, 1] : [1, -1]) {
      const b = { x: x + nx * off * side, y: y + ny * off * side, w, h };
      first ||= b;
      if (!boxes.some((o) => Math.abs(b.x - o.x) * 2 < b.w + o.w && Math.abs(b.y - o.y) * 2 < b.h + o.h)) {
        boxes.push(b);
        return b;
      }
    }
  }
  boxes.push(first);
  return first;
}

function rateLabel(p, a, width, boxes) {
  const text = fmtRate(a.opsIn + a.opsOut) + ' ops/s' + (a.lagOps > 0 ? ' · lag ' + a.lagOps : '');
  const b = place(p, text.length * 6.6, 14, width / 2 + 3, boxes, false);
  return s('text', { class: 'rate' + (a.lagOps > 0 ? ' lagging' : ''), x: f1(b.x), y: f1(b.y + 4) }, text);
}

const lockPaths = () => [s('path', { d: 'M-3,-1v-2.5a3,3 0 0 1 6,0v2.5', class: 'shackle' }),
  s('rect', { x: -4.5, y: -1, width: 9, height: 7, rx: 1.5, class: 'body' })];

function lockGlyph(p, width, boxes) {
  const b = place(p, 20, 20, width / 2 + 2, boxes, true);
  return s('g', { class: 'lock', transform: `translate(${f1(b.x)},${f1(b.y)})` },
    s('title', {}, 'end-to-end encrypted'), s('circle', { r: 10 }), ...lockPaths());
}

const wire = (p, attrs) => [s('path', { class: 'hit', d: p.d }), s('path', { class: 'wire', d: p.d, ...attrs })];

function renderGraph(v) {
  const svg = $('graph'), t = v.t;
  const W = Math.max(320, Math.round(svg.getBoundingClientRect().width) || 960);
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  const selfId = String(t.device_id || '(this device)');
  const nodes = new Map();
  const add = (id, n) => nodes.get(id) || nodes.set(id, { id, name: short(id), ...n }).get(id);
  const self = add(selfId, { name: String(t.name || short(selfId)), role: t.role === 'hub' ? 'hub' : 'device',
    state: 'self', self: true });
  for (const l of v.links) {
    add(l.device_id, { name: String(l.name || short(l.device_id)), role: l.role === 'hub' ? 'hub' : 'device',
      state: l.state || 'unknown', link: l });
  }
  const edges = [], seen = new Set();
  for (const e of v.edges) {
    const a = e && e.from, b = e && e.to;
    if (!a || !b || typeof a !== 'string' || typeof b !== 'string' || a === b || a === selfId || b === selfId) continue;
    const key = a < b ? a + ' ' + b : b + ' ' + a;
    if (seen.has(key)) continue;
    seen.add(key);
    // `from` is the hub that reported the session.
    edges.push([add(a, { role: 'hub', state: 'unknown' }), add(b, { role: 'device', state: 'unknown' })]);
  }
  const list = [...nodes.values()];
  for (const n of list) n.r = (n.role === 'hub' ? 21 : 16) + (n.self ? 4 : 0);
  layout(list, self, W);

  // Node shapes and labels, which links and their labels keep clear of.
  const obstacles = [], boxes = [];
  for (const n of list) {
    const ly = n.y + n.r + (n.self ? 17 : 11), lw = Math.max(30, n.name.length * 7.2), lh = n.self ? 30 : 16;
    obstacles.push({ n, x: n.x, y: n.y, r: n.r + 6 }, { n, x: n.x, y: ly, r: Math.max(lh, lw / 2) * 0.7 });
    boxes.push({ x: n.x, y: n.y, w: 2 * n.r + 8, h: 2 * n.r + 8 }, { x: n.x, y: ly, w: lw, h: lh });
  }

  const links = edges.map(([a, b]) => {
    const p = curve(a, b, a.r + 3, b.r + 3, []);
    return s('line', { class: 'edge', 'data-from': a.id, 'data-to': b.id,
      x1: f1(p.x1), y1: f1(p.y1), x2: f1(p.x2), y2: f1(p.y2) },
    s('title', {}, `${a.name} ↔ ${b.name}, as ${a.name} reports`));
  });
  for (const l of v.links) {
    const peer = nodes.get(l.device_id), a = l.agg;
    if (peer.self) continue;
    let g, p, width = 2;
    if (l.state === 'direct') {
      width = Math.min(8, 1.5 + Math.log2(1 + a.opsIn + a.opsOut));
      p = curve(self, peer, self.r + 4 + (a.taking ? 12 : 0), peer.r + 4 + (a.sending ? 12 : 0), obstacles);
      g = s('g', { class: 'link', 'data-peer': l.device_id }, s('title', {}, linkTip(l, v.now)),
        ...wire(p, { 'stroke-width': width.toFixed(2),
          'marker-end': a.sending && 'url(#arrow)', 'marker-start': a.taking && 'url(#arrow)' }),
        rateLabel(p, a, width, boxes));
    } else if (l.state === 'relayed' && l.via) {
      const via = list.filter((n) => n !== peer && (n.id === l.via || n.name === l.via));
      const hub = via.find((n) => n.role === 'hub') || via[0];
      if (!hub) continue;
      p = curve(peer, hub, peer.r + 4, hub.r + 4, obstacles);
      g = s('g', { class: 'link relayed', 'data-peer': l.device_id, 'data-via': hub.id },
        s('title', {}, linkTip(l, v.now)), ...wire(p, {}));
      if (a.opsIn + a.opsOut > 0 || a.lagOps > 0) g.append(rateLabel(p, a, width, boxes));
    } else continue;
    if (a.e2e) g.append(lockGlyph(p, width, boxes));
    links.push(g);
  }

  const out = [];
  for (const n of list) {
    const r = n.r, hub = n.role === 'hub', ag = v.agent;
    const tip = n.self
      ? [`${n.name} (${n.role}) · this device`, n.id, t.mesh ? 'mesh ' + t.mesh : 'no mesh', ag.agent,
        has(ag.uptime_ms) && 'up ' + fmtMs(ag.uptime_ms), plural(v.dbs.length, 'database')].filter(Boolean).join('\n')
      : n.link ? linkTip(n.link, v.now) : n.id + "\nnot linked to this device (seen in a hub's report)";
    const box = (k, c) => (hub
      ? s('rect', { class: c, x: -r - k, y: -r - k, width: 2 * (r + k), height: 2 * (r + k), rx: 8 + k })
      : s('circle', { class: c, r: r + k }));
    out.push(s('g', { class: `node st-${cls(n.state)}${n.self ? ' self' : ''}`, 'data-id': n.id, 'data-role': n.role,
      'data-state': !n.self && n.state, transform: `translate(${f1(n.x)},${f1(n.y)})` },
    s('title', {}, tip),
    n.self && box(5, 'halo'),
    box(0, 'shape'),
    hub && s('text', { class: 'glyph', y: 4 }, 'HUB'),
    n.state === 'removed' && s('path', { class: 'cross', d: `M${-r},${-r}L${r},${r}M${r},${-r}L${-r},${r}` }),
    s('text', { class: 'label', y: r + (n.self ? 20 : 15) }, n.name),
    n.self && s('text', { class: 'sublabel', y: r + 33 }, 'this device')));
  }
  if (list.length === 1) {
    out.push(s('text', { class: 'empty', x: W / 2, y: H - 24 }, t.mesh ? 'no other members yet' : 'not in a mesh: no peers'));
  }
  $('layer').replaceChildren(...links, ...out);
}

// ---- tables

const lockIcon = () => s('svg', { class: 'lock-icon', width: 12, height: 14, viewBox: '-6 -8 12 14' }, ...lockPaths());
const td = (text, c) => h('td', { class: c }, text);

function renderPeers(v) {
  const rows = v.links.slice().sort(byKey((l) => String(l.name || l.device_id).toLowerCase())).map((l) => {
    const a = l.agg, idle = !l.databases.length;
    const extra = [l.via && 'via ' + l.viaName, has(l.retry_in_ms) && 'retry in ' + fmtMs(l.retry_in_ms)].filter(Boolean);
    return h('tr', { 'data-peer': l.device_id, class: 'row-' + cls(l.state) },
      h('td', { title: l.device_id }, h('strong', {}, l.name || short(l.device_id)), a.e2e && ' ', a.e2e && lockIcon()),
      td(l.role || 'device'),
      h('td', {}, h('span', { class: 'badge st-' + cls(l.state) }, String(l.state || 'unknown').replace('_', ' ')),
        extra.length > 0 && h('span', { class: 'muted' }, ' ' + extra.join(' · ')),
        l.error && h('div', { class: 'err' }, l.error)),
      td(l.address || DASH, 'mono'),
      td(has(l.rtt_ms) ? f1(l.rtt_ms) + ' ms' : DASH, 'num'),
      td(idle ? DASH : fmtRate(a.opsIn), 'num'),
      td(idle ? DASH : fmtRate(a.opsOut), 'num'),
      td(idle ? DASH : fmtBytes(a.bIn), 'num'),
      td(idle ? DASH : fmtBytes(a.bOut), 'num'),
      td(fmtLag(a), a.lagOps > 0 ? 'num warn' : 'num'),
      h('td', { class: 'num', title: has(a.last) && new Date(a.last).toLocaleString() }, fmtAgo(a.last, v.now)));
  });
  $('peers').tBodies[0].replaceChildren(...(rows.length ? rows : [h('tr', { class: 'empty' }, h('td', { colspan: 11 }, 'No peers.'))]));
}

function renderDatabases(v) {
  const per = new Map();
  for (const l of v.links) for (const d of l.databases) per.set(d.db, [...(per.get(d.db) || []), d]);
  const rows = v.dbs.map((d) => {
    const st = d.settings || {}, a = agg(per.get(d.name) || []), e2e = st.encryption === 'e2e';
    const cols = arr(d.collections);
    return h('tr', { 'data-db': d.name },
      h('td', {}, h('strong', {}, d.name), cols.length > 0 && h('span', { class: 'muted',
        title: cols.map((c) => c && c.name).filter(Boolean).join(', ') }, ' · ' + plural(cols.length, 'collection'))),
      h('td', { title: st.durability && 'durability: ' + st.durability }, st.sync_mode || DASH),
      h('td', {}, e2e && lockIcon(), e2e ? ' e2e' : st.encryption || DASH,
        e2e && has(d.key_epoch) && h('span', { class: 'muted' }, ' · key epoch ' + d.key_epoch)),
      td(has(d.head) ? d.head.toLocaleString('en') : DASH, 'num'),
      td(has(d.ops_held) ? d.ops_held.toLocaleString('en') : DASH, 'num'),
      td(fmtRate(a.opsIn), 'num'),
      td(fmtRate(a.opsOut), 'num'),
      td(fmtLag(a), a.lagOps > 0 ? 'num warn' : 'num'));
  });
  $('databases').tBodies[0].replaceChildren(...(rows.length ? rows : [h('tr', { class: 'empty' }, h('td', { colspan: 8 }, 'No databases.'))]));
}

// ---- data flow

function render(st) {
  const v = normalize(st);
  for (const f of [renderHeader, renderGraph, renderPeers, renderDatabases]) {
    try { f(v); } catch (e) { console.error(e); }
  }
}

function onState(st) {
  if (dead) return;
  lastState = st;
  lastAt = Date.now();
  document.body.dataset.loaded = '';
  banner();
  setStatus('live', 'live');
  const d = new Date(lastAt);
  $('updated').textContent = `updated ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  render(st);
}

function openStream() {
  if (dead) return;
  if (es) es.close();
  es = new EventSource('/api/events' + q);
  es.addEventListener('state', (ev) => {
    try { onState(JSON.parse(ev.data)); } catch (e) { console.error('bad state message', e); }
  });
  es.addEventListener('error', () => {
    if (dead) return;
    setStatus('down', 'disconnected, retrying');
    // EventSource gives up for good on a non-200 answer (a 401, say): find out which, then reopen.
    if (es.readyState === EventSource.CLOSED) {
      clearTimeout(retryTimer);
      retryTimer = setTimeout(fetchState, 3000);
    }
  });
}

async function fetchState() {
  try {
    const r = await fetch('/api/state' + q, { cache: 'no-store' });
    if (r.status === 401) return badToken();
    if (r.ok) onState(await r.json());
    else setStatus('down', 'disconnected, retrying');
  } catch (e) {
    setStatus('down', 'disconnected, retrying');
  }
  openStream();
}

setInterval(() => {
  const age = Math.round((Date.now() - lastAt) / 1000);
  if (!dead && lastAt && age > 5 && /live|stale/.test(document.body.dataset.conn)) setStatus('stale', `no update for ${age} s`);
}, 1000);

let frame = 0;
addEventListener('resize', () => {
  cancelAnimationFrame(frame);
  frame = requestAnimationFrame(() => lastState && render(lastState));
});

if (token) fetchState();
else stop('no token', 'token is missing');
