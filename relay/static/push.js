/* Relay Web Push subscribe snippet.
 *
 *   <script src="/static/push.js"></script>
 *   <script>
 *     // on a user gesture (e.g. a "Notify me" button):
 *     relayPush.subscribe({ token: jwt }).then((sub) => console.log("subscribed", sub.endpoint));
 *     // optional: { base: "https://relay.example.com", channels: ["booking_created"] }
 *     relayPush.unsubscribe({ token: jwt });
 *   </script>
 *
 * `token` is the merchant app's JWT (claims sub, merchantId). `base` is where Relay runs
 * (default: this page's origin); sw.js must be served from the page's own origin. */
(function (global) {
  "use strict";

  function b64urlToBytes(text) {
    const padded = (text + "===".slice((text.length + 3) % 4)).replace(/-/g, "+").replace(/_/g, "/");
    const raw = atob(padded);
    const bytes = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    return bytes;
  }

  function sameKey(buffer, bytes) {
    if (!buffer) return true;
    const have = new Uint8Array(buffer);
    return have.length === bytes.length && have.every((b, i) => b === bytes[i]);
  }

  async function call(base, path, method, token, body) {
    const response = await fetch(base + path, {
      method: method,
      headers: Object.assign(
        body === undefined ? {} : { "Content-Type": "application/json" },
        token ? { Authorization: "Bearer " + token } : {}
      ),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) {
      let message = response.statusText;
      try { message = (await response.json()).error || message; } catch (err) { /* not JSON */ }
      throw new Error("relay " + method + " " + path + ": " + response.status + " " + message);
    }
    return response.status === 204 ? null : response.json();
  }

  async function subscribe(options) {
    const opts = options || {};
    const base = opts.base || "";
    if (!("serviceWorker" in navigator) || !("PushManager" in global)) {
      throw new Error("Web Push is not supported by this browser");
    }
    const permission = await Notification.requestPermission();
    if (permission !== "granted") throw new Error("notification permission " + permission);
    const { publicKey } = await call(base, "/push/vapid-public-key", "GET");
    const registration = await navigator.serviceWorker.register(opts.sw || "/sw.js", { scope: "/" });
    await navigator.serviceWorker.ready;
    const serverKey = b64urlToBytes(publicKey);
    let subscription = await registration.pushManager.getSubscription();
    if (subscription !== null && !sameKey(subscription.options.applicationServerKey, serverKey)) {
      await subscription.unsubscribe(); // Relay's VAPID key changed: subscribe again
      subscription = null;
    }
    if (subscription === null) {
      subscription = await registration.pushManager.subscribe({
        userVisibleOnly: true,
        applicationServerKey: serverKey,
      });
    }
    const body = subscription.toJSON();
    if (opts.channels) body.channels = opts.channels;
    await call(base, "/push/subscriptions", "POST", opts.token, body);
    return subscription;
  }

  async function unsubscribe(options) {
    const opts = options || {};
    const registration = await navigator.serviceWorker.getRegistration(opts.sw || "/sw.js");
    const subscription = registration ? await registration.pushManager.getSubscription() : null;
    if (subscription === null) return false;
    await call(opts.base || "", "/push/subscriptions", "DELETE", opts.token, { endpoint: subscription.endpoint });
    return subscription.unsubscribe();
  }

  global.relayPush = { subscribe: subscribe, unsubscribe: unsubscribe };
})(self);
