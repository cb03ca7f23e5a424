// A readable view of the service's OpenAPI description (served locally: no CDN, works offline).
"use strict";

function node(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  return n;
}

function typeOf(schema) {
  if (!schema) return "";
  if (schema.anyOf) return schema.anyOf.map(typeOf).filter((t) => t !== "null").join(" | ");
  return schema.type || (schema.$ref ? schema.$ref.split("/").pop() : "");
}

async function main() {
  const root = document.getElementById("docs");
  const response = await fetch("/openapi.json", { credentials: "same-origin" });
  if (!response.ok) {
    root.replaceChildren(node("p", "error", response.status === 401
      ? "This server needs a token: open the search page once to sign in, then come back."
      : `Cannot load /openapi.json (${response.status}).`));
    return;
  }
  const spec = await response.json();
  root.replaceChildren(node("h1", "", `${spec.info.title} ${spec.info.version}`),
                       node("p", "desc", spec.info.description || ""));
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const card = node("section", "card doc");
      const head = node("h2", "");
      head.append(node("span", `method ${method}`, method.toUpperCase()), node("code", "", path));
      card.append(head, node("p", "", op.summary || ""));
      if (op.description) card.append(node("p", "desc", op.description));
      const params = op.parameters || [];
      if (params.length) {
        const table = node("table", "params");
        for (const p of params) {
          const tr = node("tr");
          tr.append(node("td", "", p.name), node("td", "desc", `${p.in} · ${typeOf(p.schema)}`),
                    node("td", "", (p.description || p.schema?.description || "")));
          table.append(tr);
        }
        card.append(table);
      }
      root.append(card);
    }
  }
}

document.addEventListener("DOMContentLoaded", main);
