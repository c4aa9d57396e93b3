// backout dashboard: live sections over server-sent events. The server renders every section's HTML; this
// module only swaps a section when its HTML changed. Without JavaScript the page still shows a snapshot.
const live = document.getElementById("live");
const label = document.getElementById("live-state");

const shown = new Map(); // section → the HTML last put in it

function connect() {
  const source = new EventSource(live.dataset.stream);
  source.addEventListener("open", () => { label.textContent = "on"; live.dataset.state = "on"; });
  source.addEventListener("error", () => {
    // CONNECTING: the browser retries by itself (server restarting, network). CLOSED: it gave up for good,
    // which an answer other than an event stream does (401 once the session is no longer valid).
    if (source.readyState === EventSource.CLOSED) {
      label.textContent = "signed out — reload to sign in"; live.dataset.state = "closed";
    } else {
      label.textContent = "reconnecting"; live.dataset.state = "off";
    }
  });
  source.addEventListener("sections", (ev) => {
    const sections = JSON.parse(ev.data);
    for (const [name, html] of Object.entries(sections)) {
      const el = document.getElementById(`s-${name}`);
      if (el && shown.get(name) !== html) { el.innerHTML = html; shown.set(name, html); }
    }
    live.dataset.updated = String(Date.now());
  });
}

if (live && "EventSource" in window) connect();
