import { FileSystem } from "@effect/platform"
import { Effect } from "effect"
import { createPrivateKey, randomUUID, sign, X509Certificate } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import type { Pki } from "./Certificates.ts"
import { respondJson, serveHttps } from "./HttpsServer.ts"

/** One access grant of a distribution token (`access` claim). */
export interface TokenAccess {
  readonly type: string
  readonly name: string
  readonly actions: ReadonlyArray<string>
}

export interface TokenServerOptions {
  readonly pki: Pki
  /** `service` of the registry's `auth.token` (the token's audience). */
  readonly service: string
  /** `issuer` of the registry's `auth.token`. */
  readonly issuer: string
  readonly username: string
  readonly password: string
  /** Receives one line per request (never a credential). */
  readonly log: (line: string) => void
  /** How long a token is valid (`expires_in` and the JWT's `exp`); default 300 s. */
  readonly tokenSeconds?: number
}

export interface TokenServer {
  /** `https://127.0.0.1:PORT/token`, the registry's `auth.token.realm`. */
  readonly realm: string
  /** The PEM bundle the registry trusts for token signatures (`auth.token.rootcertbundle`). */
  readonly rootCertBundle: string
}

const base64Url = (input: Buffer | string) => Buffer.from(input).toString("base64url")

/** `repository:name:pull,push` -> grant; names may contain ':' only in the middle part. */
export const parseScope = (scope: string): TokenAccess | undefined => {
  const first = scope.indexOf(":")
  const last = scope.lastIndexOf(":")
  if (first <= 0 || last <= first) return undefined
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(",").filter((action) => action !== "")
  }
}

const basicCredentials = (request: IncomingMessage): { username: string; password: string } | undefined => {
  const header = request.headers.authorization
  if (header === undefined || !/^basic /i.test(header)) return undefined
  const decoded = Buffer.from(header.slice(6).trim(), "base64").toString("utf8")
  const separator = decoded.indexOf(":")
  return separator < 0 ? undefined : { username: decoded.slice(0, separator), password: decoded.slice(separator + 1) }
}

/**
 * A docker distribution token server (the "token authentication specification"): checks Basic credentials and
 * answers `{token, access_token, expires_in, issued_at}` with an ES256 JWT whose header carries the signing
 * certificate (`x5c`), signed by the test CA that the registry trusts as its root certificate bundle.
 */
export const startTokenServer = (options: TokenServerOptions) =>
  Effect.gen(function*() {
    const fs = yield* FileSystem.FileSystem
    const server = yield* options.pki.issue("registry-token-server", { ips: ["127.0.0.1"], dns: ["localhost"] })
    const signer = yield* options.pki.issue("registry-token-signer", {})
    const signerCert = new X509Certificate(yield* fs.readFileString(signer.cert))
    const signerKey = createPrivateKey(yield* fs.readFileString(signer.key))
    const tls = { cert: yield* fs.readFileString(server.cert), key: yield* fs.readFileString(server.key) }

    const lifetime = options.tokenSeconds ?? 300
    const issue = (subject: string, access: ReadonlyArray<TokenAccess>) => {
      const now = Math.floor(Date.now() / 1000)
      const header = { typ: "JWT", alg: "ES256", x5c: [signerCert.raw.toString("base64")] }
      const claims = {
        iss: options.issuer,
        sub: subject,
        aud: options.service,
        exp: now + lifetime,
        nbf: now - 10,
        iat: now,
        jti: randomUUID(),
        access
      }
      const input = `${base64Url(JSON.stringify(header))}.${base64Url(JSON.stringify(claims))}`
      const signature = sign("sha256", Buffer.from(input), { key: signerKey, dsaEncoding: "ieee-p1363" })
      return { token: `${input}.${base64Url(signature)}`, issuedAt: new Date(now * 1000).toISOString() }
    }

    const handle = (request: IncomingMessage, response: ServerResponse) =>
      Effect.sync(() => {
        const url = new URL(request.url ?? "/", "https://127.0.0.1")
        const credentials = basicCredentials(request)
        const scopes = url.searchParams.getAll("scope").flatMap((scope) => scope.split(" ")).filter((s) => s !== "")
        const line = (status: number, subject: string) =>
          options.log(
            `token-server: ${request.method} ${url.pathname} service=${url.searchParams.get("service") ?? ""} ` +
              `scope=${scopes.join(" ")} account=${subject} -> ${status}`
          )
        if (url.pathname !== "/token" || request.method !== "GET") {
          line(404, "-")
          return respondJson(response, 404, { errors: [{ code: "NOT_FOUND", message: "no such endpoint" }] })
        }
        if (url.searchParams.get("service") !== options.service) {
          line(400, "-")
          return respondJson(response, 400, { errors: [{ code: "INVALID_REQUEST", message: "unknown service" }] })
        }
        const known = credentials?.username === options.username && credentials.password === options.password
        if (credentials !== undefined && !known) {
          line(401, credentials.username)
          return respondJson(response, 401, {
            errors: [{ code: "UNAUTHORIZED", message: "invalid username or password" }]
          })
        }
        const granted = credentials === undefined
          ? []
          : scopes.flatMap((scope) => {
            const access = parseScope(scope)
            return access === undefined || access.type !== "repository" ? [] : [access]
          })
        const subject = credentials?.username ?? ""
        const { issuedAt, token } = issue(subject, granted)
        line(200, subject === "" ? "(anonymous)" : subject)
        return respondJson(response, 200, { token, access_token: token, expires_in: lifetime, issued_at: issuedAt })
      })

    const listening = yield* serveHttps({ address: "127.0.0.1", tls, handler: handle })
    return { realm: `${listening.url}/token`, rootCertBundle: options.pki.caFile } satisfies TokenServer
  })
