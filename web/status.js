// The status page follows the stream of changes (GET /events): each change
// has it fetch itself at once and swap in the new lock list, so the filter
// box keeps its focus and what is typed in it. While the stream is open,
// it refreshes on its own only once a minute, to keep the times fresh;
// without it (a browser or proxy that does not pass it), every few
// seconds. Typing in the filter asks the server at once. If the server
// cannot be reached, the page says so and keeps the last list.
(() => {
  "use strict";
  const every = Number(document.body.dataset.refresh) * 1000;
  const everyWhileLive = 60 * 1000;
  let live = false; // the stream of changes is open
  const form = document.getElementById("filter");
  const stale = document.getElementById("stale");
  let timer = 0;
  let latest = 0; // the newest refresh; an older answer arriving late is dropped

  async function refresh() {
    clearTimeout(timer);
    const mine = ++latest;
    try {
      // The page's address may hold credentials (http://user:pass@host/),
      // which fetch refuses; the browser sends the ones it has anyway.
      const url = new URL(location.href);
      url.username = url.password = "";
      const res = await fetch(url, { cache: "no-store" });
      if (!res.ok) {
        throw new Error(`it answered ${res.status} ${res.statusText}`);
      }
      const text = await res.text();
      if (mine !== latest) {
        return;
      }
      const page = new DOMParser().parseFromString(text, "text/html");
      for (const id of ["summary", "order", "pools", "locks"]) {
        document.getElementById(id).replaceWith(page.getElementById(id));
      }
      cadence();
      document.title = page.title;
      stale.hidden = true;
    } catch (err) {
      if (mine !== latest) {
        return;
      }
      const at = new Date().toLocaleTimeString();
      stale.textContent = `Could not refresh at ${at}: ${err.message}. The list below is from the time it says; trying again every ${every / 1000} s.`;
      stale.hidden = false;
    }
    timer = setTimeout(refresh, live ? everyWhileLive : every);
  }

  // cadence says on the page how it keeps up.
  function cadence() {
    const text = document.getElementById("cadence");
    if (text) {
      text.textContent = live ? "updates as locks change" : `refreshes every ${every / 1000}\u00a0s`;
    }
    document.body.dataset.live = live ? "stream" : "refresh";
  }

  // Each change asks for the list once, a moment later: a burst of
  // changes is one fetch.
  let pending = 0;
  function soon() {
    clearTimeout(pending);
    pending = setTimeout(refresh, 250);
  }
  if (window.EventSource) {
    // The page's address may hold credentials, which EventSource would
    // carry into its URL; the browser sends the ones it has anyway.
    const url = new URL("/events", location.href);
    url.username = url.password = "";
    const stream = new EventSource(url);
    stream.onopen = () => {
      live = true;
      cadence();
      soon(); // changes made while it was closed
    };
    stream.onmessage = soon;
    stream.onerror = () => {
      // It connects again by itself; meanwhile the timer refreshes.
      live = false;
      cadence();
      clearTimeout(timer);
      timer = setTimeout(refresh, every);
    };
  }

  // Filtering keeps the URL in step, so that a reload or a shared link
  // shows the same locks.
  function filter() {
    const query = new URLSearchParams(new FormData(form));
    if (!query.get("q")) {
      query.delete("q");
    }
    const search = query.toString();
    history.replaceState(null, "", search ? `?${search}` : location.pathname);
    refresh();
  }
  let typing = 0;
  form.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(filter, 200);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(typing);
    filter();
  });
  timer = setTimeout(refresh, every);
})();
