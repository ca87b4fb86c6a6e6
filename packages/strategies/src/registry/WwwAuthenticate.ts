export interface Challenge {
  /** Lower-case scheme: `basic`, `bearer`, ... */
  readonly scheme: string
  readonly params: Readonly<Record<string, string>>
}

/** Parses `WWW-Authenticate` (RFC 7235): one or more challenges, parameters as tokens or quoted strings. */
export const parseWwwAuthenticate = (header: string): ReadonlyArray<Challenge> => {
  const challenges: Array<{ scheme: string; params: Record<string, string> }> = []
  let position = 0
  const skip = (pattern: RegExp) => {
    while (position < header.length && pattern.test(header[position]!)) position++
  }
  const token = () => {
    const start = position
    while (position < header.length && /[!#$%&'*+\-.^_`|~0-9A-Za-z/]/.test(header[position]!)) position++
    return header.slice(start, position)
  }
  const quoted = () => {
    let value = ""
    position++
    while (position < header.length && header[position] !== "\"") {
      if (header[position] === "\\" && position + 1 < header.length) position++
      value += header[position]
      position++
    }
    position++
    return value
  }
  while (position < header.length) {
    skip(/[\s,]/)
    const word = token()
    if (word === "") {
      position++
      continue
    }
    skip(/\s/)
    const current = challenges.at(-1)
    if (header[position] === "=" && current !== undefined) {
      position++
      skip(/\s/)
      current.params[word.toLowerCase()] = header[position] === "\"" ? quoted() : token()
      skip(/\s/)
    } else {
      challenges.push({ scheme: word.toLowerCase(), params: {} })
      skip(/\s/)
      const start = position
      const name = token()
      skip(/\s/)
      if (name !== "" && header[position] === "=") {
        position++
        skip(/\s/)
        challenges.at(-1)!.params[name.toLowerCase()] = header[position] === "\"" ? quoted() : token()
      } else {
        position = start
      }
    }
  }
  return challenges
}
