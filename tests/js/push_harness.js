// Runs relay/static/sw.js or push.js in a fake browser and prints what they did as JSON.
// Usage: node push_harness.js sw|snippet <file> <scenario JSON>
"use strict";
const fs = require("fs");
const vm = require("vm");

const [mode, file, scenarioText] = process.argv.slice(2);
const scenario = JSON.parse(scenarioText || "{}");
const code = fs.readFileSync(file, "utf8");
const log = [];

async function runServiceWorker() {
  const handlers = {};
  const windows = (scenario.windows || []).map((url) => ({
    url,
    focus() { log.push(["focus", url]); return Promise.resolve(this); },
    navigate(to) { log.push(["navigate", url, to]); return Promise.resolve(this); },
  }));
  const self = {
    location: { origin: "https://app.example.com" },
    addEventListener: (name, fn) => { handlers[name] = fn; },
    skipWaiting: () => {},
    registration: {
      showNotification: (title, options) => { log.push(["show", title, options]); return Promise.resolve(); },
    },
    clients: {
      claim: () => Promise.resolve(),
      matchAll: () => Promise.resolve(windows),
      openWindow: (url) => { log.push(["open", url]); return Promise.resolve(null); },
    },
  };
  vm.runInNewContext(code, { self, URL, console });
  const waits = [];
  const event = (extra) => Object.assign({ waitUntil: (p) => waits.push(p) }, extra);
  const raw = scenario.push;
  handlers.push(event({
    data: raw === undefined ? null : { json: () => JSON.parse(raw), text: () => raw },
  }));
  await Promise.all(waits.splice(0));
  const shown = log.find((entry) => entry[0] === "show");
  handlers.notificationclick(event({
    notification: { data: shown ? shown[2].data : {}, close: () => log.push(["close"]) },
  }));
  await Promise.all(waits);
}

async function runSnippet() {
  const publicKey = scenario.publicKey;
  const calls = [];
  let subscribed = null;
  const subscription = {
    endpoint: "https://push.example.com/abc",
    options: { applicationServerKey: null },
    toJSON: () => ({ endpoint: "https://push.example.com/abc", expirationTime: null,
                     keys: { p256dh: "P", auth: "A" } }),
    unsubscribe: () => Promise.resolve(true),
  };
  const registration = {
    pushManager: {
      getSubscription: () => Promise.resolve(null),
      subscribe: (options) => {
        subscribed = Array.from(options.applicationServerKey);
        log.push(["subscribe", options.userVisibleOnly, subscribed]);
        return Promise.resolve(subscription);
      },
    },
  };
  const fetch = (url, init) => {
    calls.push([url, init.method, init.headers, init.body === undefined ? null : JSON.parse(init.body)]);
    const body = url.endsWith("/push/vapid-public-key") ? { publicKey } : { id: 1 };
    return Promise.resolve({ ok: true, status: url.endsWith("/push/subscriptions") ? 201 : 200,
                             json: () => Promise.resolve(body) });
  };
  const self = {
    PushManager: function PushManager() {},
  };
  const context = {
    self, fetch, atob: (s) => Buffer.from(s, "base64").toString("binary"), Uint8Array, JSON, Object,
    navigator: { serviceWorker: {
      register: (url, options) => { log.push(["register", url, options]); return Promise.resolve(registration); },
      ready: Promise.resolve(registration),
    } },
    Notification: { requestPermission: () => Promise.resolve("granted") },
  };
  vm.runInNewContext(code, context);
  await self.relayPush.subscribe({ token: "T", channels: ["booking_created"] });
  log.push(["fetch", calls]);
}

(mode === "sw" ? runServiceWorker() : runSnippet())
  .then(() => process.stdout.write(JSON.stringify(log)))
  .catch((err) => { process.stderr.write(String(err && err.stack || err)); process.exit(1); });
