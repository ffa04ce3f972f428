/* Relay service worker: shows booking notifications pushed by Relay (Web Push).
 * Serve it at the root of your origin (Relay serves it at /sw.js) so its scope covers
 * the pages that should open when a notification is clicked. */
"use strict";

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch (err) {
    message = { title: "Booking changed", body: event.data ? event.data.text() : "" };
  }
  const title = message.title || "Booking changed";
  const options = {
    body: message.body || "",
    tag: message.tag || undefined,
    renotify: Boolean(message.tag),
    data: { url: message.url || "/", payload: message.data || {} },
  };
  event.waitUntil(self.registration.showNotification(title, options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const target = new URL((event.notification.data && event.notification.data.url) || "/", self.location.origin);
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      for (const client of windows) {
        if (client.url === target.href && "focus" in client) return client.focus();
      }
      for (const client of windows) {
        if (new URL(client.url).origin === target.origin && "navigate" in client) {
          return client.navigate(target.href).then((c) => (c ? c.focus() : undefined));
        }
      }
      return self.clients.openWindow(target.href);
    })
  );
});
