import { CheckpointerApi } from "@checkpointer/core"
import { HttpApiBuilder, HttpServerResponse, OpenApi } from "@effect/platform"
import { Effect } from "effect"

const escape = (text: string) => text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`)

type Operation = {
  readonly summary?: string
  readonly description?: string
  readonly parameters?: ReadonlyArray<
    { readonly name: string; readonly in: string; readonly required?: boolean; readonly schema?: unknown }
  >
  readonly requestBody?: { readonly content?: Record<string, { readonly schema?: unknown }> }
  readonly responses?: Record<string, { readonly description?: string; readonly content?: Record<string, unknown> }>
}

const json = (value: unknown) => `<pre>${escape(JSON.stringify(value, null, 2))}</pre>`

const renderOperation = (method: string, path: string, operation: Operation) => `
<section>
  <h2><code>${method.toUpperCase()} ${escape(path)}</code></h2>
  <p><strong>${escape(operation.summary ?? "")}</strong></p>
  <p>${escape(operation.description ?? "")}</p>
  ${
  (operation.parameters ?? []).length === 0 ?
    "" :
    `<h3>Parameters</h3><ul>${
      (operation.parameters ?? []).map((p) =>
        `<li><code>${escape(p.name)}</code> (${escape(p.in)}${p.required ? ", required" : ""}) ${json(p.schema)}</li>`
      ).join("")
    }</ul>`
}
  ${
  operation.requestBody?.content === undefined ?
    "" :
    `<h3>Body (optional)</h3>${
      Object.entries(operation.requestBody.content).map(([type, body]) =>
        `<p><code>${escape(type)}</code></p>${json(body.schema)}`
      )
        .join("")
    }`
}
  <h3>Responses</h3><ul>${
  Object.entries(operation.responses ?? {}).map(([status, response]) =>
    `<li><code>${status}</code> ${escape(response.description ?? "")} ${
      Object.keys(response.content ?? {}).map((type) => `<code>${escape(type)}</code>`).join(" ")
    }</li>`
  ).join("")
}</ul>
</section>`

/** A self-contained HTML page (no scripts, works offline) describing the API, generated from its OpenAPI document. */
export const renderDocsPage = (spec: OpenApi.OpenAPISpec) =>
  `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${escape(spec.info.title)} API</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
pre{background:#f4f4f4;padding:.5rem;overflow:auto}section{border-top:1px solid #ccc;margin-top:1.5rem}</style></head>
<body><h1>${escape(spec.info.title)} API</h1><p>${escape(spec.info.description ?? "")}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a></p>
${
    Object.entries(spec.paths).flatMap(([path, item]) =>
      Object.entries(item as Record<string, Operation>).map(([method, operation]) =>
        renderOperation(method, path, operation)
      )
    ).join("\n")
  }
</body></html>`

export const DocsPageLive = HttpApiBuilder.Router.use((router) =>
  router.get(
    "/docs",
    Effect.succeed(HttpServerResponse.html(renderDocsPage(OpenApi.fromApi(CheckpointerApi))))
  )
)
