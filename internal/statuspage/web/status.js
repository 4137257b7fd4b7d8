// The status page follows the stream of changes (GET /events): each change
// has it fetch itself at once and swap in the new lock list, so the filter
// box keeps its focus and what is typed in it. While the stream is open,
// it refreshes on its own only once a minute, to keep the times fresh;
// without it (a browser or proxy that does not pass it), every few
// seconds. Typing in the filter asks the server at once. If the server
// cannot be reached, the page says so and keeps the last list.
//
// Operators' forms (force release, remove a waiter, reserve, give back)
// call the API from the page, with fetch on its own origin, and say what
// became of it. A card whose form is open is kept as it was shown while
// the rest refreshes: a force release is sent with the token the person
// saw (If-Match), and refused if the lock changed since.
(() => {
  "use strict";
  document.body.classList.add("scripted"); // the forms need this script
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
        const fresh = page.getElementById(id);
        keepOpenCards(document.getElementById(id), fresh);
        document.getElementById(id).replaceWith(fresh);
      }
      fillNames();
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

  // keepOpenCards puts into fresh, in place of their new versions, the
  // cards of old in which a person has a form open or is typing.
  function keepOpenCards(old, fresh) {
    for (const card of old.querySelectorAll("[data-card]")) {
      if (!card.querySelector("details[open]") && !card.contains(document.activeElement)) {
        continue;
      }
      const same = [...fresh.querySelectorAll("[data-card]")].find((c) => c.dataset.card === card.dataset.card);
      if (same) {
        same.replaceWith(card);
      }
    }
  }

  // The name a person reserves under: the last one they gave on this
  // browser, or the credential they signed in with.
  const nameKey = "locker.operator";
  function fillNames() {
    const name = localStorage.getItem(nameKey) || document.body.dataset.signedIn || "";
    for (const input of document.querySelectorAll("form[data-reserve] input[name=lock_by]")) {
      if (!input.value) {
        input.value = name;
      }
    }
  }
  fillNames();

  // act sends what an operator's form asks for, and says on the page
  // what became of it.
  const acted = document.getElementById("acted");
  async function act(form) {
    const body = {};
    for (const [name, value] of new FormData(form)) {
      if (value.trim() !== "") {
        body[name] = value.trim();
      }
    }
    let path = form.dataset.path;
    if (!path) {
      path = `/lock/${encodeURIComponent(body.lock)}`;
      delete body.lock;
    }
    if ("reserve" in form.dataset) {
      body.key = document.body.dataset.reservedBy + body.lock_by;
      localStorage.setItem(nameKey, body.lock_by);
    }
    const headers = { "Content-Type": "application/json" };
    if (form.dataset.ifMatch) {
      headers["If-Match"] = form.dataset.ifMatch;
    }
    // As for the refresh, the credentials stay out of the URL.
    const url = new URL(path, location.href);
    url.username = url.password = "";
    const button = form.querySelector("button");
    button.disabled = true;
    let ok = false;
    let text;
    try {
      const res = await fetch(url, { method: form.dataset.method, headers, body: JSON.stringify(body), cache: "no-store" });
      const reply = await res.json().catch(() => ({}));
      ok = res.ok;
      if (ok) {
        text = `Done: ${reply.response || form.dataset.what}.`;
      } else if (res.status === 412) {
        text = `Not done: the lock changed since this page showed it. ${reply.error || ""} The page now shows it as it is: look again before you act.`;
      } else {
        text = `Not done (${res.status} ${res.statusText}): ${reply.error || "the server gave no reason"}`;
      }
    } catch (err) {
      text = `Not known whether ${form.dataset.what} was made: the server could not be reached or its answer was lost (${err.message}). Look at the lock below before you try again.`;
    }
    button.disabled = false;
    acted.textContent = text;
    acted.classList.toggle("failed", !ok);
    acted.hidden = false;
    form.closest("details")?.removeAttribute("open");
    if (ok && form.closest("#reserve")) {
      form.reset();
      fillNames();
    }
    refresh();
  }
  document.addEventListener("submit", (event) => {
    if (event.target.dataset.method) {
      event.preventDefault();
      act(event.target);
    }
  });

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
