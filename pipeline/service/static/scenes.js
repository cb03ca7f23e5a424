// The list of served scenes: a card per scene, opening its 3D viewer.
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

// the page is public; its data needs the token when the server has one: asked once, kept as a cookie
function askToken() {
  return new Promise((resolve) => {
    $("token-form").hidden = false;
    $("token-form").onsubmit = async (event) => {
      event.preventDefault();
      const r = await fetch("/api/login", { method: "POST", credentials: "same-origin",
                                            headers: { Authorization: `Bearer ${$("token").value.trim()}` } });
      if (r.ok) { $("token-form").hidden = true; resolve(); return; }
      $("token").value = "";
      $("token").placeholder = "that token was not accepted";
    };
  });
}

async function start() {
  try {
    let response = await fetch("/api/scenes", { credentials: "same-origin" });
    if (response.status === 401) {
      await askToken();
      response = await fetch("/api/scenes", { credentials: "same-origin" });
    }
    const body = await response.json();
    if (!response.ok) throw new Error(body.error || response.statusText);
    const health = await fetch("/api/health").then((r) => r.json()).catch(() => ({}));
    $("search-tab").hidden = !health.indexes;
    $("info").textContent = `${body.scenes.length} scene(s) · ${body.outputs.join(", ")}`;
    $("empty").hidden = body.scenes.length > 0;
    for (const s of body.scenes) {
      const picture = s.thumbnail_url ? el("img", { src: s.thumbnail_url, alt: s.scene, loading: "lazy" })
                                      : el("div", { class: "noimg" });
      const weights = s.random_weights ? " · RANDOM weights" : "";
      $("scenes").append(el("a", { class: "scene-card", href: s.viewer_url, "data-scene": s.scene },
        picture, el("div", { class: "meta" }, el("div", { class: "name", title: s.scene }, s.scene),
          el("div", { class: "sub" }, `${s.views} views · ${s.points.toLocaleString()} points${weights}`))));
    }
  } catch (e) {
    $("error").textContent = `The server did not answer: ${e.message}`;
    $("error").hidden = false;
  }
  document.body.dataset.ready = "1";
}

start();
