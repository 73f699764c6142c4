// Starts kinesalite bound to one host (its CLI always listens on every interface).
// Usage: node kinesalite-local.js --host 127.0.0.1 --port 18045 [kinesalite options...]
// Modules resolve through NODE_PATH (scripts/services.sh points it at the cached node_modules).
'use strict'
var argv = require('minimist')(process.argv.slice(2))
var host = argv.host || '127.0.0.1'
var port = argv.port || 18045
var server = require('kinesalite')(argv).listen(port, host, function () {
  var a = server.address()
  console.log('kinesalite listening at http://%s:%s', a.address, a.port)
})
server.on('error', function (err) {
  console.error('kinesalite: ' + err.message)
  process.exit(1)
})
function stop () { server.close(function () { process.exit(0) }); setTimeout(function () { process.exit(0) }, 2000).unref() }
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
