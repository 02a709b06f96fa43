// A little progressive enhancement; every page works without it.
document.addEventListener("DOMContentLoaded", () => {
  const all = document.getElementById("select-all");
  if (all) {
    all.addEventListener("change", () => {
      document.querySelectorAll('input[name="task"][type="checkbox"]').forEach((b) => { b.checked = all.checked; });
    });
  }
  // The inbox updates without a reload: it polls inbox.json (ids and states only) and, when what it
  // shows changed, fetches this page again and swaps in the new rows, keeping the boxes ticked.
  const table = document.getElementById("inbox");
  if (!table) return;
  const count = document.getElementById("alert-count");
  const live = document.getElementById("live");
  const base = location.pathname.replace(/\/(inbox)?$/, "");
  let busy = false;
  const refresh = async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const resp = await fetch(base + "/inbox.json" + location.search, { credentials: "same-origin" });
      if (!resp.ok) return;
      const data = await resp.json();
      if (data.signature === table.dataset.signature) return;
      const page = await fetch(location.href, { credentials: "same-origin" });
      if (!page.ok || page.redirected) return;
      const doc = new DOMParser().parseFromString(await page.text(), "text/html");
      const fresh = doc.getElementById("inbox");
      if (!fresh) return;
      const ticked = new Set(Array.from(table.querySelectorAll('input[name="task"]:checked')).map((b) => b.value));
      const tbody = document.importNode(fresh.tBodies[0], true);
      tbody.querySelectorAll('input[name="task"][type="checkbox"]').forEach((b) => { b.checked = ticked.has(b.value); });
      table.replaceChild(tbody, table.tBodies[0]);
      table.dataset.signature = fresh.dataset.signature;
      count.textContent = doc.getElementById("alert-count").textContent;
      live.textContent = "Updated " + new Date().toLocaleTimeString();
    } catch (e) {
      // offline or signed out: try again at the next tick
    } finally {
      busy = false;
    }
  };
  setInterval(refresh, 1000 * Number(table.dataset.refreshS || 15));
});
